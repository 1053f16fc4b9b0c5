"""The wire codec: exact sizes, round trips, and rejection of malformed payloads."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.codec import (
    PayloadError,
    Upload,
    decode_upload,
    encode_upload,
    pack_levels,
    packed_size,
    payload_bits,
    unpack_levels,
)
from laq_fl.config import AlgorithmConfig
from laq_fl.quantizer import quantize_innovation
from laq_fl.server import ServerMemory

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


def test_bit_layout_is_big_endian_msb_first() -> None:
    # levels 1, 2, 3 at 3 bits -> 001 010 011 + 7 zero bits of padding
    assert pack_levels(np.array([1, 2, 3], np.uint8), 3) == bytes([0b00101001, 0b10000000])


def test_payload_bits_counts_radius() -> None:
    assert payload_bits(4, 7850) == 32 + 4 * 7850
    assert payload_bits(32, 7850) == 32 * 7850
    assert payload_bits(32, 10, float_bytes=8) == 640


def test_pack_rejects_out_of_range_levels() -> None:
    with pytest.raises(ValueError, match="levels must lie"):
        pack_levels(np.array([0, 8], np.uint8), 3)


@pytest.mark.parametrize("bits", [3, 8, 12])
def test_encode_decode_upload(bits: int) -> None:
    rng = np.random.default_rng(bits)
    grad = rng.normal(size=1000).astype(np.float32)
    quantization = quantize_innovation(grad, np.zeros_like(grad), bits)
    upload = encode_upload(quantization, bits)
    assert len(upload.data) * 8 + 32 - payload_bits(bits, 1000) in range(8)
    np.testing.assert_array_equal(decode_upload(upload.data, upload.radius, bits, 1000), quantization.levels)


def test_full_precision_upload_is_raw_floats() -> None:
    grad = np.arange(5, dtype=np.float32)
    upload = encode_upload(quantize_innovation(grad, np.zeros_like(grad), 32), 32)
    assert len(upload.data) == 20
    np.testing.assert_array_equal(decode_upload(upload.data, 0.0, 32, 5), grad)


GOOD_LEVELS = pack_levels(np.arange(100, dtype=np.uint8) % 8, 3)


@pytest.mark.parametrize(
    ("data", "radius", "match"),
    [
        (GOOD_LEVELS[:-1], 1.0, "bytes"),
        (GOOD_LEVELS + b"\x00", 1.0, "bytes"),
        (b"", 1.0, "bytes"),
        (np.frombuffer(GOOD_LEVELS, np.uint8).astype(np.float32), 1.0, "uint8"),
        (np.frombuffer(GOOD_LEVELS, np.uint8).astype(np.int16), 1.0, "uint8"),
        ([1, 2, 3], 1.0, "bytes"),
        (GOOD_LEVELS, float("nan"), "radius"),
        (GOOD_LEVELS, float("inf"), "radius"),
        (GOOD_LEVELS, -1.0, "radius"),
        (GOOD_LEVELS, 1e39, "float32"),
        (GOOD_LEVELS, "1.0", "radius"),
        (GOOD_LEVELS, None, "radius"),
    ],
)
def test_malformed_payload_rejected(data: object, radius: object, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        decode_upload(data, radius, 3, 100)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "upload",
    [
        Upload(data=b"\x00" * 3, radius=1.0),
        Upload(data=b"\x00" * 5, radius=float("nan")),
        Upload(data=b"\x00" * 5, radius=-2.0),
    ],
)
def test_malformed_upload_leaves_server_state_untouched(upload: Upload) -> None:
    config = AlgorithmConfig(algorithm="laq", bits=4, xi=(0.1,))
    server = ServerMemory(np.zeros(10, np.float32), config, num_workers=2)
    good = quantize_innovation(np.ones(10, np.float32), np.zeros(10, np.float32), 4)
    server.accept("a", encode_upload(good, 4))
    before = (server.aggregate.copy(), {k: v.copy() for k, v in server.copies.items()}, dict(server.skip_clocks))
    with pytest.raises(PayloadError):
        server.accept("a", upload)
    with pytest.raises(PayloadError):
        server.accept("b", upload)
    np.testing.assert_array_equal(server.aggregate, before[0])
    assert server.copies.keys() == before[1].keys()
    np.testing.assert_array_equal(server.copies["a"], before[1]["a"])
    assert server.skip_clocks == before[2]


def test_full_precision_rejects_non_finite() -> None:
    data = np.array([1.0, np.nan], np.float32).tobytes()
    with pytest.raises(PayloadError, match="NaN"):
        decode_upload(data, 0.0, 32, 2)
    with pytest.raises(PayloadError, match="bytes"):
        decode_upload(data[:-1], 0.0, 32, 2)
