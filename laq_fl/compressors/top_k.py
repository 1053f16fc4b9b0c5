"""Top-k sparsification, as Deep Gradient Compression sends gradients (Lin, Han, Mao, Wang, Dally, ICLR 2018).

The ``k = ceil(density p)`` largest-magnitude coordinates travel; with the error-feedback memory the others
accumulate locally until they grow large enough (DGC's local gradient accumulation). DGC's momentum
correction, gradient clipping and sparsity warm-up are not part of this compressor.

Payload: the ``k`` values as little-endian float32, then their indices as little-endian uint32 in
increasing order: ``64 k`` payload bits, 32 per value and 32 per index (``ceil(log2 p)`` bits per index
would do; 32 is what DGC's implementation sends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from laq_fl.codec import PayloadError
from laq_fl.compressors.base import FLOAT32_LE, Compressed, Compressor, check_fraction, check_size

INDEX_LE = np.dtype("<u4")


@dataclass(frozen=True)
class TopK(Compressor):
    """The ``ceil(density p)`` largest ``|x_i|`` as float32 with their indices; the rest are zero.

    Parameters
    ----------
    density
        Fraction of coordinates sent, in (0, 1] (at least one is).
    """

    name = "top-k"
    density: float

    def __post_init__(self) -> None:
        check_fraction("top-k", "density", self.density)

    def count(self, size: int) -> int:
        """``k`` for a vector of ``size`` coordinates."""
        # The relative nudge keeps ceil(0.07 * 100) at 7: the float product is 7.000000000000001.
        return min(size, max(1, math.ceil(self.density * size * (1 - 1e-12))))

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        k = self.count(values.size)
        # Ties broken towards lower indices, so the choice does not depend on the sort's internals.
        chosen = np.sort(np.argsort(-np.abs(values), kind="stable")[:k]).astype(INDEX_LE)
        sent = values[chosen].astype(FLOAT32_LE)
        value = np.zeros(values.shape, np.float64)
        value[chosen] = sent
        return Compressed(payload=sent.tobytes() + chosen.tobytes(), value=value)

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        k = self.count(size)
        check_size(buffer, 8 * k, f"top-{k}")
        indices = buffer[4 * k :].view(INDEX_LE)
        if indices.size and (indices[-1] >= size or np.any(np.diff(indices.astype(np.int64)) <= 0)):
            raise PayloadError(f"top-k indices must be increasing and below {size}")
        value = np.zeros(size, np.float64)
        value[indices] = buffer[: 4 * k].view(FLOAT32_LE)
        return value

    def payload_bits(self, payload: bytes, size: int) -> int:
        return 64 * self.count(size)

    def error_bound(self, vector: np.ndarray) -> float:
        k = self.count(vector.size)
        if k >= vector.size:
            return 0.0
        magnitudes = np.sort(np.abs(vector.astype(np.float64)))
        return float(magnitudes[-k - 1])  # the largest coordinate left behind
