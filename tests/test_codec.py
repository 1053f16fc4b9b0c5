"""Bit packing: exact sizes, round trips, and the wire layout pinned byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.codec import PayloadError, pack_levels, packed_size, unpack_levels, validate_bits

LENGTHS = [1, 7, 8, 9, 7850, 159010]


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("count", LENGTHS)
def test_round_trip_and_exact_size(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 1_000_003 + count)
    levels = rng.integers(0, 2**bits, size=count).astype(np.uint8 if bits <= 8 else np.uint16)
    levels[0] = 2**bits - 1  # the top level must survive too
    data = pack_levels(levels, bits)
    assert len(data) == (bits * count + 7) // 8 == packed_size(bits, count)
    back = unpack_levels(data, bits, count)
    assert back.dtype == levels.dtype
    np.testing.assert_array_equal(back, levels)


def bit_string_reference(levels: list[int], bits: int) -> bytes:
    """The layout written out by hand: each level as ``bits`` binary digits, most significant first, concatenated,
    zero-padded on the right to whole bytes. Independent of numpy's bit routines."""
    digits = "".join(format(level, f"0{bits}b") for level in levels)
    digits += "0" * (-len(digits) % 8)
    return bytes(int(digits[i : i + 8], 2) for i in range(0, len(digits), 8))


@pytest.mark.parametrize("bits", range(1, 17))
def test_wire_bytes_pinned_for_every_width(bits: int) -> None:
    top = 2**bits - 1
    # Asymmetric patterns: a reversed bit order or a swapped byte order changes the bytes.
    levels = [1, top, 0, top >> 1, (0b1011 * 2**bits // 16) & top, 2 % (top + 1), top - 1 if top > 1 else 0]
    assert pack_levels(np.array(levels, np.uint16 if bits > 8 else np.uint8), bits) == bit_string_reference(levels, bits)
    np.testing.assert_array_equal(unpack_levels(bit_string_reference(levels, bits), bits, len(levels)), levels)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("count", [1, 5, 1001])
def test_wire_bytes_match_the_reference_on_random_levels(bits: int, count: int) -> None:
    # Each width has its own fast path (whole bytes for 1, 2, 4, 8 and 16 bits; bit rows otherwise): all must
    # write the same layout, including the padding of the last byte.
    levels = np.random.default_rng(bits * 7919 + count).integers(0, 2**bits, size=count)
    packed = pack_levels(levels.astype(np.uint16 if bits > 8 else np.uint8), bits)
    assert packed == bit_string_reference(levels.tolist(), bits)
    np.testing.assert_array_equal(unpack_levels(packed, bits, count), levels)

def test_hand_derived_layouts() -> None:
    # levels 1, 2, 3 at 3 bits -> 001 010 011 + 7 zero bits of padding
    assert pack_levels(np.array([1, 2, 3], np.uint8), 3) == bytes([0b00101001, 0b10000000])
    # 16 bits: big-endian uint16; 12 bits: 0xABC, 0x123 -> AB C1 23
    assert pack_levels(np.array([0x1234, 0xFFFE], np.uint16), 16) == b"\x12\x34\xff\xfe"
    assert pack_levels(np.array([0xABC, 0x123], np.uint16), 12) == b"\xab\xc1\x23"
    # 1 bit: 1,0,1,1,0,0,0,0,1 -> 10110000 1(0000000)
    assert pack_levels(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8), 1) == b"\xb0\x80"
    # 9 bits: 0x1FF, 0x001 -> 11111111 1 000000001 (000000)
    assert pack_levels(np.array([0x1FF, 0x001], np.uint16), 9) == bytes([0xFF, 0x80, 0x40])


def test_pack_rejects_out_of_range_levels() -> None:
    with pytest.raises(ValueError, match="levels must lie"):
        pack_levels(np.array([0, 8], np.uint8), 3)


@pytest.mark.parametrize("data", [b"\x00" * 37, b"\x00" * 39, b"", [1, 2, 3], np.zeros(38, np.float32), np.zeros(38, np.int16)])
def test_unpack_rejects_wrong_sizes_and_types(data: object) -> None:
    with pytest.raises(PayloadError):
        unpack_levels(data, 3, 100)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [0, 17, 32, -1, 4.0, True, "4"])
def test_invalid_widths_rejected(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        validate_bits(bits)  # type: ignore[arg-type]
