"""The scaled sign of EF-SignSGD (Karimireddy, Rebjock, Stich, Jaggi, ICML 2019, Algorithm 1).

``C(v) = (||v||_1 / p) sgn(v)``: one bit per coordinate and one float32 scale. Biased on its own; with the
error-feedback memory (``v = g + e``, ``e <- v - C(v)``) the residual carries what was not sent to the next
round, which is what makes signSGD converge (their Theorem II).

Payload: ``||v||_1 / p`` as little-endian float32, then one bit per coordinate (1: ``v_i >= 0``, 0: negative),
most significant bit first: ``32 + p`` payload bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.codec import PayloadError
from laq_fl.compressors.base import SCALE_BYTES, Compressed, Compressor, check_size, read_scale, scale_bytes


@dataclass(frozen=True)
class ScaledSign(Compressor):
    """``(||v||_1 / p) sgn(v)``, ``sgn(0) = +1``; ``|v_i - C(v)_i| <= max |v_i| + ||v||_1 / p``."""

    name = "scaled-sign"

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        scale = np.float32(np.abs(values).sum() / values.size) if values.size else np.float32(0.0)
        positive = values >= 0
        return Compressed(payload=scale_bytes(scale) + np.packbits(positive).tobytes(), value=self._signed(positive, scale))

    @staticmethod
    def _signed(positive: np.ndarray, scale: float) -> np.ndarray:
        return np.where(positive, float(scale), -float(scale))

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        check_size(buffer, SCALE_BYTES + (size + 7) // 8, "scaled-sign")
        scale = read_scale(buffer, "sign scale")
        if size % 8 and buffer[-1] & ((1 << (8 - size % 8)) - 1):
            raise PayloadError("the sign bits set padding beyond the last coordinate")
        return self._signed(np.unpackbits(buffer[SCALE_BYTES:], count=size).astype(bool), scale)

    def payload_bits(self, payload: bytes, size: int) -> int:
        return 32 + size

    def error_bound(self, vector: np.ndarray) -> float:
        values = np.abs(vector.astype(np.float64))
        if not values.size:
            return 0.0
        scale = float(np.float32(values.sum() / values.size))
        return float(np.max(np.abs(values - scale)))
