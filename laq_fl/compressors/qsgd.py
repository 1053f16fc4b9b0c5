"""QSGD's unbiased stochastic quantizer (Alistarh, Grubic, Li, Tomioka, Vojnovic, NeurIPS 2017).

``Q(x)_i = ||x||_2 sgn(x_i) l_i / s`` with ``l_i`` in ``0..s`` rounded up or down at random so that
``E[Q(x)] = x``. With ``b`` bits per coordinate, one is the sign and ``b - 1`` the level:
``s = 2**(b-1) - 1``, and the code ``s + sgn(x_i) l_i`` lies in ``[0, 2s]``.

Payload: ``||x||_2`` as little-endian float32, then the ``b``-bit codes packed most significant bit first:
``32 + b p`` payload bits (a fixed-width code; the paper's Elias coding would count fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.arrays import norm as l2_norm
from laq_fl.codec import MAX_CODE_BITS, PayloadError, level_dtype, pack_levels, unpack_levels
from laq_fl.compressors.base import SCALE_BYTES, Compressed, Compressor, check_int, check_size, read_scale, scale_bytes


@dataclass(frozen=True)
class Qsgd(Compressor):
    """QSGD with ``s = 2**(bits-1) - 1`` levels; ``|x_i - Q(x)_i| <= ||x||_2 / s``.

    Unbiased up to the rounding of ``||x||_2`` to float32 (a relative 6e-8), kept as in the runs published
    in the README.

    Parameters
    ----------
    bits
        2..16 bits per coordinate (a sign bit and at least one magnitude bit).
    """

    name = "qsgd"
    needs_rng = True
    unbiased = True
    bits: int

    def __post_init__(self) -> None:
        check_int("qsgd", "bits", self.bits, 2, MAX_CODE_BITS)

    @property
    def levels(self) -> int:
        """``s``, the magnitude levels."""
        return 2 ** (self.bits - 1) - 1

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        s = self.levels
        norm = np.float32(l2_norm(values))
        codes = np.full(values.shape, s, np.int64)
        if norm > 0:
            scaled = np.abs(values) * (s / float(norm))
            lower = np.floor(scaled)
            magnitude = lower + (rng.random(values.shape) < scaled - lower)
            np.minimum(magnitude, s, out=magnitude)  # |x_i| may exceed the float32-rounded norm by an ulp
            codes += (np.sign(values) * magnitude).astype(np.int64)
        codes = codes.astype(level_dtype(self.bits))
        payload = scale_bytes(norm) + pack_levels(codes, self.bits)
        return Compressed(payload=payload, value=self._dequantize(codes, float(norm)))

    def _dequantize(self, codes: np.ndarray, norm: float) -> np.ndarray:
        value = codes.astype(np.float64) - self.levels
        value *= norm / self.levels
        return value

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        check_size(buffer, SCALE_BYTES + (self.bits * size + 7) // 8, f"{self.bits}-bit qsgd")
        norm = read_scale(buffer, "qsgd norm")
        codes = unpack_levels(buffer[SCALE_BYTES:], self.bits, size)
        if codes.size and codes.max() > 2 * self.levels:
            raise PayloadError(f"qsgd codes must lie in [0, {2 * self.levels}] for {self.bits} bits, got {codes.max()}")
        return self._dequantize(codes, norm)

    def payload_bits(self, payload: bytes, size: int) -> int:
        return 32 + self.bits * size

    def error_bound(self, vector: np.ndarray) -> float:
        norm = l2_norm(vector)
        return float(np.float32(norm)) / self.levels if np.float32(norm) > 0 else norm  # below float32's range: 0
