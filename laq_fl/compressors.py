"""What a worker does to its gradient before it travels, and how the server undoes it.

One :class:`Compressor` per scheme, all behind the same worker and server memory:

``none``      the gradient as float32 (GD, LAG, SGD, LASG): ``32 p`` payload bits
``laq``       LAQ's innovation quantizer, eq. (5)-(6) (QGD, LAQ, SLAQ): ``32 + b p`` bits
``qsgd``      QSGD's unbiased stochastic quantizer (Alistarh et al., NeurIPS 2017):
              ``Q(g)_i = ||g||_2 sgn(g_i) l_i / s`` with ``l_i`` in ``0..s`` rounded at random so that
              ``E[Q(g)] = g``; one sign bit and ``b - 1`` magnitude bits per coordinate,
              ``s = 2**(b-1) - 1`` levels, and the float32 norm: ``32 + b p`` bits
``sparsify``  unbiased random sparsification (Wangni et al., NeurIPS 2018): coordinate i travels with
              probability ``p_i = min(1, lam |g_i|)``, ``lam`` set so that ``sum p_i = density * p``, as
              ``g_i / p_i``; a ``p``-bit mask plus float32 values: ``p + 32 nnz`` bits

``laq`` quantizes against the last uploaded copy ``Q_hat`` (so the server needs its copy to decode);
``qsgd`` and ``sparsify`` compress the gradient itself and draw their randomness from
:func:`compression_rng`, seeded by (seed, worker, iteration) so that every runner draws the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.codec import (
    PayloadError,
    Upload,
    as_byte_array,
    decode_upload,
    encode_upload,
    pack_levels,
    payload_bits,
    upload_from_bytes,
    upload_to_bytes,
)
from laq_fl.quantizer import FULL_PRECISION, Quantization, dequantize, quantize_innovation, validate_bits

NONE = "none"
LAQ = "laq"
QSGD = "qsgd"
SPARSIFY = "sparsify"
SCHEMES = (NONE, LAQ, QSGD, SPARSIFY)
STOCHASTIC_SCHEMES = (QSGD, SPARSIFY)

_RNG_STREAM = 0x51C0  # keeps compression draws independent of the minibatch draws of the same round


def compression_rng(seed: int, worker: int, iteration: int) -> np.random.Generator:
    """The random stream of worker ``worker`` at ``iteration`` for QSGD and sparsification."""
    return np.random.default_rng([seed, worker, iteration, _RNG_STREAM])


def qsgd_levels(bits: int) -> int:
    """``s``, the magnitude levels of QSGD with ``bits`` per coordinate (one of them the sign): ``2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class Compressor:
    """One compression scheme with its parameters; the worker and the server hold equal ones.

    ``bits`` matters for ``laq`` (32 switches quantization off) and ``qsgd`` (2..16);
    ``density`` (0, 1] is the expected fraction of coordinates ``sparsify`` sends.
    """

    scheme: str = LAQ
    bits: int = FULL_PRECISION
    density: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        validate_bits(self.bits)
        if self.scheme == QSGD and not 2 <= self.bits <= 16:
            raise ValueError(f"qsgd needs 2..16 bits (a sign bit and at least one magnitude bit), got {self.bits}")
        if self.scheme == NONE and self.bits != FULL_PRECISION:
            raise ValueError(f"scheme 'none' sends full precision; bits must be 32, got {self.bits}")
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density <= 1.0):
            raise ValueError(f"density must be in (0, 1], got {self.density!r}")

    @property
    def stochastic(self) -> bool:
        """True when :meth:`compress` needs a random generator."""
        return self.scheme in STOCHASTIC_SCHEMES

    @property
    def wire_bits(self) -> int:
        """Bits per coordinate of the fixed-width schemes; 32 for ``none`` and ``sparsify`` (float32 values)."""
        return self.bits if self.scheme in (LAQ, QSGD) else FULL_PRECISION

    def compress(self, grad: np.ndarray, q_hat: np.ndarray, rng: np.random.Generator | None = None) -> Quantization:
        """Compress ``grad`` (``laq`` quantizes its innovation against ``q_hat``); ``value`` is what the server will decode."""
        if self.scheme in (NONE, LAQ):
            return quantize_innovation(grad, q_hat, self.wire_bits)
        if rng is None:
            raise ValueError(f"{self.scheme} is random: pass rng=compression_rng(seed, worker, iteration)")
        if self.scheme == QSGD:
            return qsgd_quantize(grad, self.bits, rng, q_hat.dtype)
        return sparsify(grad, self.density, rng, q_hat.dtype)

    def encode(self, quantization: Quantization) -> Upload:
        """The upload of a compressed gradient: packed levels and scale, a mask and values, or raw floats."""
        if self.scheme == SPARSIFY:
            mask = quantization.levels.astype(bool)
            values = quantization.value[mask].astype("<f4")
            return Upload(data=np.packbits(mask).tobytes() + values.tobytes(), radius=0.0)
        if self.scheme == QSGD:
            return Upload(data=pack_levels(quantization.levels, self.bits), radius=float(quantization.radius))
        return encode_upload(quantization, self.wire_bits)

    def decode(self, upload: Upload, previous: np.ndarray | None, size: int, dtype: np.dtype | type) -> np.ndarray:
        """The worker's new copy from its upload (``previous``: the server's copy, for ``laq``).

        Raises :class:`~laq_fl.codec.PayloadError` for anything malformed, before any state changes.
        """
        dtype = np.dtype(dtype)
        if self.scheme == SPARSIFY:
            return _decode_sparse(upload.data, size, dtype)
        decoded = decode_upload(upload.data, upload.radius, self.wire_bits, size, dtype)
        if self.scheme == QSGD:
            if decoded.size and decoded.max() > 2 * qsgd_levels(self.bits):
                raise PayloadError(f"qsgd codes must lie in [0, {2 * qsgd_levels(self.bits)}] for {self.bits} bits")
            return qsgd_dequantize(decoded, upload.radius, self.bits, dtype)
        if self.wire_bits == FULL_PRECISION:
            return decoded
        return dequantize(previous if previous is not None else np.zeros(size, dtype), decoded, upload.radius, self.bits)

    def to_bytes(self, upload: Upload) -> bytes:
        """The blob that travels: float32 scale + packed levels (``laq``, ``qsgd``), else the data alone."""
        return upload_to_bytes(upload, self.wire_bits)

    def from_bytes(self, blob: bytes | bytearray | memoryview | np.ndarray) -> Upload:
        """Inverse of :meth:`to_bytes`; :meth:`decode` validates the parts."""
        return upload_from_bytes(blob, self.wire_bits)

    def payload_bits(self, upload: Upload, size: int, float_bytes: int = 4) -> int:
        """Payload bits of one upload: ``32 p``, ``32 + b p``, or the mask plus ``32`` per sent value."""
        if self.scheme == SPARSIFY:
            return size + 8 * (len(upload.data) - (size + 7) // 8)
        return payload_bits(self.wire_bits, size, float_bytes)


def qsgd_quantize(grad: np.ndarray, bits: int, rng: np.random.Generator, dtype: np.dtype | type = np.float32) -> Quantization:
    """QSGD's ``Q_s(g)`` with ``s = 2**(bits-1) - 1``; codes ``s + sgn(g_i) l_i`` in ``[0, 2s]`` fit ``bits`` bits.

    ``|g_i - Q(g)_i| <= ||g||_2 / s`` and ``E[Q(g)] = g`` (up to the float32 rounding of the norm).
    """
    levels_count = qsgd_levels(bits)
    values = grad.astype(np.float64)
    norm = np.float32(np.linalg.norm(values))
    codes = np.full(values.shape, levels_count, np.int64)
    if norm > 0:
        scaled = np.abs(values) * (levels_count / float(norm))
        lower = np.floor(scaled)
        magnitude = lower + (rng.random(values.shape) < scaled - lower)
        np.minimum(magnitude, levels_count, out=magnitude)  # |g_i| may exceed the float32-rounded norm by an ulp
        codes += (np.sign(values) * magnitude).astype(np.int64)
    codes = codes.astype(np.uint8 if bits <= 8 else np.uint16)
    value = qsgd_dequantize(codes, norm, bits, dtype)
    error = values - value
    return Quantization(levels=codes, radius=norm, value=value, error=error)


def qsgd_dequantize(codes: np.ndarray, norm: float, bits: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``||g|| (code - s) / s``: worker and server both call this, so their copies agree bit for bit."""
    levels_count = qsgd_levels(bits)
    value = codes.astype(np.float64) - levels_count
    value *= float(np.float32(norm)) / levels_count
    return value.astype(dtype)


def sparsify_probabilities(grad: np.ndarray, density: float) -> np.ndarray:
    """Wangni et al.'s ``p_i = min(1, lam |g_i|)`` with ``sum p_i = density * p`` (all nonzero kept if that is fewer)."""
    magnitude = np.abs(grad.astype(np.float64))
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


def sparsify(grad: np.ndarray, density: float, rng: np.random.Generator, dtype: np.dtype | type = np.float32) -> Quantization:
    """Keep coordinate i with probability ``p_i`` and send ``g_i / p_i``: unbiased, ``density * p`` values expected."""
    values = grad.astype(np.float64)
    probabilities = sparsify_probabilities(values, density)
    keep = rng.random(values.shape) < probabilities
    value = np.zeros(values.shape, dtype)
    value[keep] = (values[keep] / probabilities[keep]).astype(np.float32)  # what travels is float32
    error = values - value
    return Quantization(levels=keep.astype(np.uint8), radius=np.float32(0.0), value=value, error=error)


def _decode_sparse(data: bytes, size: int, dtype: np.dtype) -> np.ndarray:
    buffer = as_byte_array(data)
    mask_bytes = (size + 7) // 8
    if buffer.size < mask_bytes:
        raise PayloadError(f"a sparse upload starts with a {mask_bytes}-byte mask; got {buffer.size} bytes")
    mask = np.unpackbits(buffer[:mask_bytes], count=size).astype(bool)
    expected = mask_bytes + 4 * int(mask.sum())
    if buffer.size != expected:
        raise PayloadError(f"sparse upload is {buffer.size} bytes; its mask of {int(mask.sum())} values needs {expected}")
    values = buffer[mask_bytes:].view("<f4")
    if not np.all(np.isfinite(values)):
        raise PayloadError("sparse upload contains NaN or inf")
    dense = np.zeros(size, dtype)
    dense[mask] = values
    return dense


__all__ = [
    "LAQ",
    "NONE",
    "QSGD",
    "SCHEMES",
    "SPARSIFY",
    "Compressor",
    "compression_rng",
    "qsgd_dequantize",
    "qsgd_quantize",
    "qsgd_levels",
    "sparsify",
    "sparsify_probabilities",
]
