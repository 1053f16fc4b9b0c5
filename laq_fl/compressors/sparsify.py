"""Unbiased random sparsification (Wangni, Wang, Liu, Zhang, NeurIPS 2018), the paper's SSGD.

Coordinate ``i`` travels with probability ``p_i = min(1, lam |x_i|)``, ``lam`` chosen so that
``sum_i p_i = density * p``, as ``x_i / p_i``; the rest are zero. ``E[Q(x)] = x``.

Payload: a ``p``-bit mask (most significant bit first, ``ceil(p / 8)`` bytes), then the sent values as
little-endian float32: ``p + 32 nnz`` payload bits (the paper counts the values only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.codec import PayloadError
from laq_fl.compressors.base import FLOAT32_LE, Compressed, Compressor, check_fraction


def sparsify_probabilities(values: np.ndarray, density: float) -> np.ndarray:
    """Wangni et al.'s ``p_i = min(1, lam |x_i|)`` with ``sum p_i = density * p`` (all nonzero kept if fewer)."""
    magnitude = np.abs(values.astype(np.float64))
    budget = density * magnitude.size
    if np.count_nonzero(magnitude) <= budget:
        return (magnitude > 0).astype(np.float64)
    descending = np.sort(magnitude)[::-1]
    tail = np.cumsum(descending[::-1])[::-1]  # tail[j] = sum of all but the j largest
    saturated = np.arange(magnitude.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (budget - saturated) / tail
        fits = (budget - saturated > 0) & (tail > 0) & (scale * descending <= 1.0)
    lam = scale[np.argmax(fits)]  # the fewest saturated coordinates that keep every p_i <= 1
    return np.minimum(1.0, lam * magnitude)


@dataclass(frozen=True)
class RandomSparsifier(Compressor):
    """Keep ``x_i`` with probability ``p_i`` and send ``x_i / p_i``; ``density * p`` values expected.

    Parameters
    ----------
    density
        Expected fraction of coordinates sent, in (0, 1].
    """

    name = "sparsify"
    needs_rng = True
    unbiased = True
    density: float

    def __post_init__(self) -> None:
        check_fraction("sparsify", "density", self.density)

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        probabilities = sparsify_probabilities(values, self.density)
        keep = rng.random(values.shape) < probabilities
        sent = (values[keep] / probabilities[keep]).astype(FLOAT32_LE)  # what travels is float32
        value = np.zeros(values.shape, np.float64)
        value[keep] = sent
        return Compressed(payload=np.packbits(keep).tobytes() + sent.tobytes(), value=value)

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        mask_bytes = (size + 7) // 8
        if buffer.size < mask_bytes:
            raise PayloadError(f"a sparse payload starts with a {mask_bytes}-byte mask; got {buffer.size} bytes")
        if size % 8 and buffer[mask_bytes - 1] & ((1 << (8 - size % 8)) - 1):
            raise PayloadError("the sparse mask sets padding bits beyond the last coordinate")
        mask = np.unpackbits(buffer[:mask_bytes], count=size).astype(bool)
        expected = mask_bytes + 4 * int(mask.sum())
        if buffer.size != expected:
            raise PayloadError(f"sparse payload is {buffer.size} bytes; its mask of {int(mask.sum())} values needs {expected}")
        value = np.zeros(size, np.float64)
        value[mask] = buffer[mask_bytes:].view(FLOAT32_LE)
        return value

    def payload_bits(self, payload: bytes, size: int) -> int:
        return size + 8 * (len(payload) - (size + 7) // 8)

    def error_bound(self, vector: np.ndarray) -> float:
        values = np.abs(vector.astype(np.float64))
        probabilities = sparsify_probabilities(values, self.density)
        kept = probabilities > 0
        # Dropped: |x_i|; sent: |x_i / p_i - x_i|.
        sent_error = np.zeros_like(values)
        sent_error[kept] = values[kept] / probabilities[kept] - values[kept]
        return float(max(values.max(initial=0.0), sent_error.max(initial=0.0)))
