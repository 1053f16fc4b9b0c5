"""Wire codec for one upload: b-bit levels packed into bytes plus the float32 radius (eq. 6).

An upload of a quantized innovation is ``ceil(b p / 8)`` bytes of big-endian bit-packed
levels and one float32 radius ``R``: ``32 + b p`` payload bits, as the paper counts them.
A full-precision upload (``bits == 32``: GD, LAG, SGD) is the gradient itself as raw
little-endian floats: ``32 p`` payload bits for float32.

Decoding validates everything before it returns, so a malformed upload never reaches
the caller's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.quantizer import FULL_PRECISION, Quantization, level_dtype, validate_bits

RADIUS_BITS = 32


class PayloadError(ValueError):
    """An upload whose bytes, dtype or radius does not fit what the receiver expects."""


def packed_size(bits: int, count: int) -> int:
    """Bytes that ``count`` levels of ``bits`` bits occupy: ``ceil(bits * count / 8)``."""
    return (validate_bits(bits) * count + 7) // 8


def payload_bits(bits: int, count: int, float_bytes: int = 4) -> int:
    """Payload bits of one upload of ``count`` coordinates: ``32 + b p``, or ``8 * float_bytes * p`` unquantized."""
    if validate_bits(bits) == FULL_PRECISION:
        return 8 * float_bytes * count
    return RADIUS_BITS + bits * count


def pack_levels(levels: np.ndarray, bits: int) -> bytes:
    """Pack integer levels in ``[0, 2**bits - 1]`` into exactly ``ceil(bits * len / 8)`` bytes."""
    bits = validate_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("pack_levels needs 1..16 bits; full-precision uploads carry floats")
    levels = np.asarray(levels)
    if levels.ndim != 1 or levels.dtype.kind not in "ui":
        raise ValueError(f"levels must be a 1-D integer array, got {levels.dtype} with shape {levels.shape}")
    if levels.size and (levels.min() < 0 or levels.max() > 2**bits - 1):
        raise ValueError(f"levels must lie in [0, {2**bits - 1}] for {bits} bits")
    if bits == 8:
        return levels.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return levels.astype(">u2", copy=False).tobytes()
    if bits < 8:
        # One row of 8 bits per level; keep the low ``bits`` columns, then pack row-major.
        bit_rows = np.unpackbits(levels.astype(np.uint8, copy=False)[:, None], axis=1)
        return np.packbits(bit_rows[:, 8 - bits :]).tobytes()
    big_endian = levels.astype(">u2", copy=False).view(np.uint8).reshape(-1, 2)
    bit_rows = np.unpackbits(big_endian, axis=1)
    return np.packbits(bit_rows[:, 16 - bits :]).tobytes()


def unpack_levels(data: bytes | bytearray | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_levels`; raises :class:`PayloadError` unless ``data`` is exactly the right size."""
    bits = validate_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("unpack_levels needs 1..16 bits; full-precision uploads carry floats")
    buffer = as_byte_array(data)
    expected = packed_size(bits, count)
    if buffer.size != expected:
        raise PayloadError(
            f"packed levels are {buffer.size} bytes; {count} levels of {bits} bits need exactly {expected}"
        )
    if bits == 8:
        return buffer.copy()
    if bits == 16:
        return buffer.view(">u2").astype(np.uint16)
    bit_rows = np.unpackbits(buffer, count=bits * count).reshape(count, bits)
    # packbits pads each row on the right, so a level comes out left-aligned in 8 or 16 bits.
    if bits < 8:
        return np.packbits(bit_rows, axis=1).reshape(count) >> np.uint8(8 - bits)
    left_aligned = np.packbits(bit_rows, axis=1).reshape(-1).view(">u2")
    return (left_aligned >> np.uint16(16 - bits)).astype(np.uint16)


@dataclass(frozen=True)
class Upload:
    """What one worker sends in one round: ``data`` (packed levels, or raw floats) and ``radius``."""

    data: bytes
    radius: float


def encode_upload(quantization: Quantization, bits: int) -> Upload:
    """Turn a worker's quantization into the bytes that travel (eq. 6: ``R`` and ``q``)."""
    bits = validate_bits(bits)
    if bits == FULL_PRECISION:
        return Upload(data=quantization.value.tobytes(), radius=0.0)
    if quantization.levels is None:
        raise ValueError(f"a {bits}-bit upload needs levels; got a full-precision quantization")
    return Upload(data=pack_levels(quantization.levels, bits), radius=float(quantization.radius))


def upload_to_bytes(upload: Upload, bits: int) -> bytes:
    """One blob for the wire: the radius as little-endian float32, then the packed levels (``4 + ceil(b p / 8)`` bytes).

    Full-precision uploads carry no radius: the blob is the raw floats.
    """
    if validate_bits(bits) == FULL_PRECISION:
        return upload.data
    return np.float32(upload.radius).astype("<f4").tobytes() + upload.data


def upload_from_bytes(blob: bytes | bytearray | memoryview | np.ndarray, bits: int) -> Upload:
    """Split a blob made by :func:`upload_to_bytes`; :func:`decode_upload` validates the parts."""
    buffer = as_byte_array(blob)
    if validate_bits(bits) == FULL_PRECISION:
        return Upload(data=buffer.tobytes(), radius=0.0)
    if buffer.size < RADIUS_BITS // 8:
        raise PayloadError(f"a {bits}-bit upload starts with a 4-byte float32 radius; got {buffer.size} bytes")
    radius = float(buffer[:4].view("<f4")[0])
    return Upload(data=buffer[4:].tobytes(), radius=radius)


def decode_upload(
    data: bytes | bytearray | memoryview | np.ndarray,
    radius: float,
    bits: int,
    count: int,
    float_dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Validate and decode an upload: levels for 1..16 bits, the gradient for 32 bits.

    Raises :class:`PayloadError` for a wrong length, a wrong dtype, a non-finite or
    negative radius, or non-finite full-precision values.
    """
    bits = validate_bits(bits)
    buffer = as_byte_array(data)
    if bits == FULL_PRECISION:
        float_dtype = np.dtype(float_dtype)
        expected = count * float_dtype.itemsize
        if buffer.size != expected:
            raise PayloadError(
                f"full-precision upload is {buffer.size} bytes; {count} {float_dtype} values need {expected}"
            )
        values = buffer.view(float_dtype.newbyteorder("<")).astype(float_dtype)
        if not np.all(np.isfinite(values)):
            raise PayloadError("full-precision upload contains NaN or inf")
        return values
    _check_radius(radius)
    return unpack_levels(buffer, bits, count)


def _check_radius(radius: float) -> None:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, float, np.integer, np.floating)):
        raise PayloadError(f"radius must be a float scalar, got {type(radius).__name__}")
    value = float(radius)
    if not np.isfinite(value) or value < 0.0:
        raise PayloadError(f"radius must be finite and >= 0, got {value}")
    if value > float(np.finfo(np.float32).max):
        raise PayloadError(f"radius {value} overflows float32")


def as_byte_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise PayloadError(f"payload must be bytes or a 1-D uint8 array, got {data.dtype} with shape {data.shape}")
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, np.uint8)
    raise PayloadError(f"payload must be bytes, got {type(data).__name__}")


__all__ = [
    "PayloadError",
    "Upload",
    "decode_upload",
    "encode_upload",
    "level_dtype",
    "pack_levels",
    "packed_size",
    "payload_bits",
    "unpack_levels",
    "upload_from_bytes",
    "upload_to_bytes",
]
