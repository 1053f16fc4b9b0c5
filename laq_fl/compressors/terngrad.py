"""TernGrad (Wen, Xu, Yan, Wu, Wang, Chen, Li, NeurIPS 2017): stochastic ternary levels, unbiased.

``Q(x)_i = s sgn(x_i) b_i`` with ``s = max_i |x_i|`` and ``b_i ~ Bernoulli(|x_i| / s)``, so ``E[Q(x)] = x``
and ``|x_i - Q(x)_i| <= s``. One scale for the whole vector (the paper scales per layer and clips the
gradient first; neither is done here). ``s`` is rounded *up* to float32, so every ``|x_i| / s <= 1`` and the
draw stays unbiased.

Payload: ``s`` as little-endian float32, then a 2-bit code per coordinate (0: -1, 1: 0, 2: +1; 3 is
invalid), packed most significant bit first: ``32 + 2 p`` payload bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.codec import PayloadError, pack_levels, unpack_levels
from laq_fl.compressors.base import SCALE_BYTES, Compressed, Compressor, check_size, float32_at_least, read_scale, scale_bytes

CODE_BITS = 2


@dataclass(frozen=True)
class TernGrad(Compressor):
    """Ternary ``{-s, 0, s}`` with ``s = max |x_i|``; unbiased, 2 bits per coordinate plus the scale."""

    name = "terngrad"
    needs_rng = True
    unbiased = True

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        scale = float32_at_least(float(np.max(np.abs(values)))) if values.size else np.float32(0.0)
        codes = np.ones(values.shape, np.uint8)
        if scale > 0:
            fire = rng.random(values.shape) < np.abs(values) / float(scale)
            codes = (1 + np.sign(values) * fire).astype(np.uint8)
        payload = scale_bytes(scale) + pack_levels(codes, CODE_BITS)
        return Compressed(payload=payload, value=(codes.astype(np.float64) - 1.0) * float(scale))

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        check_size(buffer, SCALE_BYTES + (CODE_BITS * size + 7) // 8, "terngrad")
        scale = read_scale(buffer, "terngrad scale")
        codes = unpack_levels(buffer[SCALE_BYTES:], CODE_BITS, size)
        if codes.size and codes.max() > 2:
            raise PayloadError("terngrad codes must lie in [0, 2] (-1, 0, +1); got 3")
        return (codes.astype(np.float64) - 1.0) * scale

    def payload_bits(self, payload: bytes, size: int) -> int:
        return 32 + CODE_BITS * size

    def error_bound(self, vector: np.ndarray) -> float:
        return float(float32_at_least(float(np.max(np.abs(vector))))) if vector.size else 0.0
