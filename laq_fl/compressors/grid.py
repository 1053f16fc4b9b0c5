"""LAQ's uniform grid quantizer, eq. (5)-(6) of Sun, Chen, Giannakis, Yang (NeurIPS 2019).

Applied to a vector ``x`` (with the reference-copy memory, ``x`` is the innovation ``g - Q_hat``)::

    R   = ||x||_inf, rounded to float32 (it travels)
    q_i = floor((x_i + R) / (2 tau R) + 1/2),  tau = 1 / (2**b - 1)          (5)
    Q(x)_i = 2 tau R q_i - R                                                 (6)
    |x_i - Q(x)_i| <= tau R

Payload: ``R`` as little-endian float32, then the ``b``-bit codes ``q`` packed most significant bit first:
``4 + ceil(b p / 8)`` bytes, ``32 + b p`` payload bits, as the paper counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from laq_fl.codec import MAX_CODE_BITS, level_dtype, pack_levels, unpack_levels
from laq_fl.compressors.base import SCALE_BYTES, Compressed, Compressor, check_int, check_size, read_scale, scale_bytes


@dataclass(frozen=True)
class Grid(Compressor):
    """``b``-bit uniform grid on ``[-R, R]`` with ``R = ||x||_inf`` (eq. 5-6); deterministic, biased.

    Parameters
    ----------
    bits
        ``b``, 1..16 bits per coordinate.
    """

    name = "grid"
    bits: int

    def __post_init__(self) -> None:
        check_int("grid", "bits", self.bits, 1, MAX_CODE_BITS)

    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        top = 2**self.bits - 1
        radius = np.float32(np.max(np.abs(values))) if values.size else np.float32(0.0)
        if radius == 0.0:
            levels = np.zeros(values.shape, level_dtype(self.bits))
        else:
            radius64 = float(radius)
            scaled = values + radius64
            scaled *= top / (2.0 * radius64)
            scaled += 0.5
            np.floor(scaled, out=scaled)
            # R is rounded to float32, so the extreme coordinate may land a hair outside the grid.
            np.clip(scaled, 0, top, out=scaled)
            levels = scaled.astype(level_dtype(self.bits))
        payload = scale_bytes(radius) + pack_levels(levels, self.bits)
        return Compressed(payload=payload, value=self._dequantize(levels, float(radius)))

    def _compress_tensor(self, values: Any, rng: np.random.Generator | None) -> Compressed:
        # The same float64 operations in the same order as _compress, on the tensor's device: same levels and value.
        import torch

        top = 2**self.bits - 1
        radius = np.float32(values.abs().max().to(torch.float32).item()) if values.numel() else np.float32(0.0)
        if radius == 0.0:
            levels = torch.zeros(values.shape, dtype=torch.uint8, device=values.device)
        else:
            radius64 = float(radius)
            scaled = values + radius64
            scaled *= top / (2.0 * radius64)
            scaled += 0.5
            scaled.floor_().clamp_(0, top)
            levels = scaled.to(torch.uint8 if self.bits <= 8 else torch.int32)
        # In float64 first: an integer tensor times a Python float is float32 in torch (numpy makes it float64).
        value = self._dequantize(levels.to(torch.float64), float(radius))

        def pack() -> bytes:
            return scale_bytes(radius) + pack_levels(levels.cpu().numpy().astype(level_dtype(self.bits)), self.bits)

        return Compressed(payload=pack, value=value)

    def _dequantize(self, levels: np.ndarray, radius: float) -> np.ndarray:
        """Eq. (6) without the reference: ``2 tau R q - R``, float64 (numpy levels, or float64 tensor levels)."""
        value = levels * (2.0 * radius / (2**self.bits - 1))
        value -= radius
        return value

    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        check_size(buffer, SCALE_BYTES + (self.bits * size + 7) // 8, f"{self.bits}-bit grid")
        radius = read_scale(buffer, "grid radius")
        return self._dequantize(unpack_levels(buffer[SCALE_BYTES:], self.bits, size), radius)

    def payload_bits(self, payload: bytes, size: int) -> int:
        return 32 + self.bits * size

    def error_bound(self, vector: np.ndarray) -> float:
        largest = float(np.max(np.abs(vector), initial=0.0))
        radius = float(np.float32(largest))
        return radius / (2**self.bits - 1) if radius > 0 else largest  # below float32's range x travels as 0
