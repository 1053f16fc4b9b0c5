"""Bit packing shared by the compressors: integer codes of 1..16 bits, most significant bit first.

``count`` codes of ``b`` bits occupy exactly ``ceil(b count / 8)`` bytes: code ``i`` fills bits
``b i .. b (i + 1) - 1`` of the byte string, read most significant bit first (so 16-bit codes are
big-endian ``uint16``), and the last byte is padded with zero bits on the right.
"""

from __future__ import annotations

import numpy as np

from laq_fl.errors import PayloadError

__all__ = ["MAX_CODE_BITS", "PayloadError", "as_byte_array", "level_dtype", "pack_levels", "packed_size", "unpack_levels",
           "validate_bits"]

MAX_CODE_BITS = 16


def validate_bits(bits: int) -> int:
    """Return ``bits`` if it is an integer in 1..16, else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"codes are packed with 1..{MAX_CODE_BITS} bits, got {bits!r}")
    return int(bits)


def level_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype that holds a code in ``[0, 2**bits - 1]``."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def packed_size(bits: int, count: int) -> int:
    """Bytes that ``count`` levels of ``bits`` bits occupy: ``ceil(bits * count / 8)``."""
    return (validate_bits(bits) * count + 7) // 8


def pack_levels(levels: np.ndarray, bits: int) -> bytes:
    """Pack integer levels in ``[0, 2**bits - 1]`` into exactly ``ceil(bits * len / 8)`` bytes."""
    bits = validate_bits(bits)
    levels = np.asarray(levels)
    if levels.ndim != 1 or levels.dtype.kind not in "ui":
        raise ValueError(f"levels must be a 1-D integer array, got {levels.dtype} with shape {levels.shape}")
    if levels.size and (levels.min() < 0 or levels.max() > 2**bits - 1):
        raise ValueError(f"levels must lie in [0, {2**bits - 1}] for {bits} bits")
    if bits == 8:
        return levels.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return levels.astype(">u2", copy=False).tobytes()
    if 8 % bits == 0:
        return _pack_whole_bytes(levels.astype(np.uint8, copy=False), bits).tobytes()
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
    buffer = as_byte_array(data)
    expected = (bits * count + 7) // 8
    if buffer.size != expected:
        raise PayloadError(
            f"packed levels are {buffer.size} bytes; {count} levels of {bits} bits need exactly {expected}"
        )
    if bits == 8:
        return buffer.copy()
    if bits == 16:
        return buffer.view(">u2").astype(np.uint16)
    if 8 % bits == 0:
        return _unpack_whole_bytes(buffer, bits, count)
    bit_rows = np.unpackbits(buffer, count=bits * count).reshape(count, bits)
    # packbits pads each row on the right, so a level comes out left-aligned in 8 or 16 bits.
    if bits < 8:
        return np.packbits(bit_rows, axis=1).reshape(count) >> np.uint8(8 - bits)
    left_aligned = np.packbits(bit_rows, axis=1).reshape(-1).view(">u2")
    return (left_aligned >> np.uint16(16 - bits)).astype(np.uint16)


def _pack_whole_bytes(levels: np.ndarray, bits: int) -> np.ndarray:
    """1, 2 or 4 bits: ``8 / bits`` codes per byte, shifted into place (several times faster than bit rows)."""
    per_byte = 8 // bits
    padded = np.zeros(-(-levels.size // per_byte) * per_byte, np.uint8)
    padded[: levels.size] = levels
    columns = padded.reshape(-1, per_byte)
    packed = columns[:, 0] << np.uint8(8 - bits)
    for column in range(1, per_byte):
        packed |= columns[:, column] << np.uint8(8 - bits * (column + 1))
    return packed


def _unpack_whole_bytes(buffer: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_whole_bytes`."""
    per_byte = 8 // bits
    mask = np.uint8(2**bits - 1)
    levels = np.empty((buffer.size, per_byte), np.uint8)
    for column in range(per_byte):
        np.bitwise_and(buffer >> np.uint8(8 - bits * (column + 1)), mask, out=levels[:, column])
    return levels.reshape(-1)[:count]


def as_byte_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """``data`` as a 1-D uint8 array without a copy; raises :class:`PayloadError` for any other type."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise PayloadError(f"payload must be bytes or a 1-D uint8 array, got {data.dtype} with shape {data.shape}")
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, np.uint8)
    raise PayloadError(f"payload must be bytes, got {type(data).__name__}")


__all__ = [
    "MAX_CODE_BITS",
    "PayloadError",
    "as_byte_array",
    "level_dtype",
    "pack_levels",
    "packed_size",
    "unpack_levels",
    "validate_bits",
]
