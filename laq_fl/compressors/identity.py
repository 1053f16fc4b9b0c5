"""No compression: the vector itself as little-endian floats (GD, LAG, SGD, LASG)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from laq_fl.compressors.base import FLOAT32_LE, FLOAT64_LE, Compressed, Compressor, ParameterError, check_size


@dataclass(frozen=True)
class Identity(Compressor):
    """The vector as ``float_bits``-bit little-endian floats: ``float_bits * p`` payload bits.

    Parameters
    ----------
    float_bits
        32 (default) or 64; a float64 run sends float64 so that its GD is exact.
    """

    name = "identity"
    float_bits: int = 32

    def __post_init__(self) -> None:
        if self.float_bits not in (32, 64):
            raise ParameterError("float_bits", f"identity sends 32- or 64-bit floats, got float_bits={self.float_bits!r}")

    @property
    def _wire(self) -> np.dtype:
        return FLOAT32_LE if self.float_bits == 32 else FLOAT64_LE

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        sent = values.astype(self._wire)
        return Compressed(payload=sent.tobytes(), value=sent.astype(np.float64))

    def _compress_tensor(self, values: Any, rng: np.random.Generator | None) -> Compressed:
        import torch

        sent = values.to(torch.float32 if self.float_bits == 32 else torch.float64)
        return Compressed(payload=lambda: sent.cpu().numpy().astype(self._wire).tobytes(), value=sent.to(torch.float64))

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        check_size(buffer, size * self._wire.itemsize, f"{self.float_bits}-bit identity")
        return buffer.view(self._wire).astype(np.float64)

    def payload_bits(self, payload: bytes, size: int) -> int:
        return self.float_bits * size

    def error_bound(self, vector: np.ndarray) -> float:
        return 0.0  # up to the rounding to float_bits
