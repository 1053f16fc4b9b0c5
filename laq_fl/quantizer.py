"""Gradient-innovation quantizer of LAQ, eq. (5)-(6) of Sun et al. (NeurIPS 2019).

A worker quantizes the *innovation* ``g - Q_hat`` of its fresh gradient ``g`` against
its last uploaded quantized gradient ``Q_hat`` on a uniform grid of ``2**b`` points
spanning ``[-R, R]`` with ``R = ||g - Q_hat||_inf``::

    q   = floor((g - Q_hat + R) / (2 tau R) + 1/2),  tau = 1 / (2**b - 1)      (5)
    Q   = Q_hat + 2 tau R q - R 1                                              (6)
    eps = g - Q,  with ||eps||_inf <= tau R

``bits == 32`` means "no quantization": ``Q = g`` and ``eps = 0``, which is how GD and
LAG run through the same code path as QGD and LAQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FULL_PRECISION = 32
"""The ``bits`` value that switches quantization off (GD, LAG, SGD)."""

MAX_QUANTIZED_BITS = 16


def validate_bits(bits: int) -> int:
    """Return ``bits`` if it is 1..16 or 32, else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer in 1..16 or 32, got {bits!r}")
    if not (1 <= bits <= MAX_QUANTIZED_BITS or bits == FULL_PRECISION):
        raise ValueError(f"bits must be in 1..16 or 32 (no quantization), got {bits}")
    return int(bits)


def level_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype that holds a level in ``[0, 2**bits - 1]``."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


@dataclass(frozen=True)
class Quantization:
    """Result of quantizing one innovation.

    Attributes
    ----------
    levels
        Integer levels ``q`` in ``[0, 2**bits - 1]`` (eq. 5); ``None`` when ``bits == 32``. The baselines'
        compressors reuse the field: QSGD's signed codes, the sparsifier's 0/1 mask.
    radius
        ``R = ||g - Q_hat||_inf`` as float32, the value that travels (eq. 6); QSGD's ``||g||_2``.
    value
        The new quantized gradient ``Q`` in the dtype of ``Q_hat``.
    error
        ``eps = g - Q`` in float64 (exact for float32 inputs).
    """

    levels: np.ndarray | None
    radius: np.float32
    value: np.ndarray
    error: np.ndarray

    @property
    def error_sq(self) -> float:
        """``||eps||_2^2``, the quantity rule (7a) needs."""
        return float(np.dot(self.error, self.error))


def dequantize(q_hat: np.ndarray, levels: np.ndarray, radius: float, bits: int) -> np.ndarray:
    """Eq. (6): ``Q = Q_hat + 2 tau R q - R 1``, in the dtype of ``q_hat``.

    Worker and server both call this, so their copies of ``Q`` agree bit for bit.
    """
    radius64 = float(np.float32(radius))
    step = 2.0 * radius64 / (2**bits - 1)
    value = q_hat.astype(np.float64)
    value += step * levels
    value -= radius64
    return value.astype(q_hat.dtype, copy=False)


def quantize_innovation(grad: np.ndarray, q_hat: np.ndarray, bits: int) -> Quantization:
    """Quantize ``grad - q_hat`` with ``bits`` per coordinate, eq. (5)-(6).

    ``bits == 32`` returns ``Q = grad`` (no quantization). A zero innovation
    (``R = 0``) returns ``Q = q_hat`` with all levels zero and no NaN.
    """
    bits = validate_bits(bits)
    if grad.shape != q_hat.shape:
        raise ValueError(f"gradient shape {grad.shape} != quantized copy shape {q_hat.shape}")
    if bits == FULL_PRECISION:
        return Quantization(
            levels=None,
            radius=np.float32(0.0),
            value=grad.astype(q_hat.dtype, copy=True),
            error=np.zeros(grad.shape, np.float64),
        )

    # float64 keeps the level arithmetic exact enough for b = 16 on float32 inputs.
    innovation = grad.astype(np.float64)
    innovation -= q_hat
    radius = np.float32(np.max(np.abs(innovation))) if innovation.size else np.float32(0.0)
    top = 2**bits - 1
    if radius == 0.0:
        levels = np.zeros(grad.shape, level_dtype(bits))
    else:
        radius64 = float(radius)
        innovation += radius64
        innovation *= top / (2.0 * radius64)
        innovation += 0.5
        np.floor(innovation, out=innovation)
        # R is rounded to float32, so the extreme coordinate may land a hair outside the grid.
        np.clip(innovation, 0, top, out=innovation)
        levels = innovation.astype(level_dtype(bits))
    value = dequantize(q_hat, levels, radius, bits)
    error = grad.astype(np.float64)
    error -= value
    return Quantization(levels=levels, radius=radius, value=value, error=error)
