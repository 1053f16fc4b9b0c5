"""One contract, every registered compressor (see ``laq_fl/compressors/base.py`` for the promises)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laq_fl.codec import PayloadError
from laq_fl.compressors import COMPRESSORS, Compressed, Compressor, NonFiniteError, build_compressor, compression_rng, compressor_from_spec
from laq_fl.config import ALGORITHMS, AlgorithmConfig
from laq_fl.server_state import ServerState
from laq_fl.worker import WorkerParts, WorkerState, worker_round

KNOBS = {"bits": 4, "density": 0.3, "float_bits": 32}
NAMES = sorted(COMPRESSORS)


def make(name: str) -> Compressor:
    return build_compressor(name, KNOBS)


def vector(size: int = 301, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Heavy-tailed, with exact zeros, like a gradient over partly blank MNIST pixels.
    values = rng.standard_t(2, size).astype(np.float32)
    values[rng.random(size) < 0.2] = 0.0
    return values


def compress(compressor: Compressor, values: np.ndarray, seed: int = 0):
    return compressor.compress(values, compression_rng(seed, 1, 2) if compressor.needs_rng else None)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [1, 9, 301, 7850])
def test_round_trip_within_the_stated_bound(name: str, size: int) -> None:
    compressor = make(name)
    values = vector(size, seed=size)
    compressed = compress(compressor, values)
    decoded = compressor.decompress(compressed.payload, size)
    np.testing.assert_array_equal(decoded, compressed.value)  # what the worker keeps == what the server rebuilds
    assert decoded.dtype == np.float64 and decoded.shape == (size,)
    error = np.max(np.abs(decoded - values.astype(np.float64)))
    float32_rounding = np.max(np.spacing(np.abs(decoded).astype(np.float32)).astype(np.float64))
    assert error <= compressor.error_bound(values) * (1 + 1e-6) + float32_rounding



@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [1, 301, 7850])
def test_a_tensor_compresses_to_the_same_payload_and_value_as_an_array(name: str, size: int) -> None:
    # A worker computing on a device compresses a torch tensor (a kernel of its own, or the CPU fallback): the
    # bytes and the value it keeps must be those of the numpy path, bit for bit, on the tensor's device.
    compressor = make(name)
    values = vector(size, seed=size)
    expected = compress(compressor, values)
    compressed = compress(compressor, torch.from_numpy(values))
    assert isinstance(compressed.value, torch.Tensor) and compressed.value.dtype == torch.float64
    assert compressed.payload == expected.payload
    np.testing.assert_array_equal(compressed.value.numpy(), expected.value)
    with pytest.raises(NonFiniteError):
        compress(compressor, torch.from_numpy(np.where(np.arange(size) == size // 2, np.inf, values)))


def test_a_payload_given_as_a_function_is_packed_once_on_first_read() -> None:
    calls = []
    compressed = Compressed(payload=lambda: calls.append(1) or b"packed", value=np.zeros(1))
    assert calls == []  # a skipped upload is never packed
    assert compressed.payload == b"packed" and compressed.payload == b"packed" and calls == [1]

@pytest.mark.parametrize("name", NAMES)
def test_payload_bits_fit_the_bytes(name: str) -> None:
    compressor = make(name)
    for size in (1, 7, 8, 301, 7850):
        payload = compress(compressor, vector(size, seed=size)).payload
        bits = compressor.payload_bits(payload, size)
        assert 0 < bits <= 8 * len(payload) < bits + 8  # at most the padding of the last byte


@pytest.mark.parametrize("name", [name for name in NAMES if COMPRESSORS[name].unbiased])
def test_unbiased_compressors_are_unbiased(name: str) -> None:
    compressor = make(name)
    values = vector(40, seed=3)
    draws = 4000
    decoded = np.array([compressor.compress(values, np.random.default_rng(seed)).value for seed in range(draws)])
    spread = decoded.std(axis=0) / np.sqrt(draws)
    # Each coordinate's mean lies within 5 standard errors of x (and exactly at 0 where x = 0).
    assert np.all(np.abs(decoded.mean(axis=0) - values) <= 5 * spread + 1e-6)
    assert not np.allclose(decoded[0], values)  # not vacuous: single draws are noisy


@pytest.mark.parametrize("name", NAMES)
def test_randomness_only_from_the_generator(name: str) -> None:
    compressor = make(name)
    values = vector(500)
    assert compress(compressor, values, seed=7).payload == compress(compressor, values, seed=7).payload
    if compressor.needs_rng:
        assert compress(compressor, values, seed=7).payload != compress(compressor, values, seed=8).payload
        with pytest.raises(ValueError, match="rng"):
            compressor.compress(values)


@pytest.mark.parametrize("name", NAMES)
def test_byte_order_of_the_input_does_not_matter(name: str) -> None:
    compressor = make(name)
    native = np.array([1.5, -2.25, 3.0, 0.0, -0.125], np.float32)
    for foreign in (native.astype(">f4"), native.astype(">f8"), native.astype("<f8")):
        assert compress(compressor, foreign).payload == compress(compressor, native).payload
    if name == "identity":
        decoded = compressor.decompress(compress(compressor, native.astype(">f4")).payload, native.size)
        np.testing.assert_array_equal(decoded, [1.5, -2.25, 3.0, 0.0, -0.125])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused(name: str, bad: float) -> None:
    values = np.array([bad, 1.0, 2.0], np.float32)
    with pytest.raises(NonFiniteError, match="non-finite"):
        compress(make(name), values)


def _malformed(payload: bytes) -> list[object]:
    return [payload[:-1], payload + b"\x00", b"", payload[: len(payload) // 2], np.frombuffer(payload, np.uint8).astype(np.float32),
            list(payload), payload.decode("latin-1")]


@pytest.mark.parametrize("name", NAMES)
def test_malformed_payloads_are_rejected(name: str) -> None:
    compressor = make(name)
    size = 301
    payload = compress(compressor, vector(size)).payload
    for bad in _malformed(payload):
        with pytest.raises(PayloadError):
            compressor.decompress(bad, size)  # type: ignore[arg-type]
    # The first float field (a scale, or the first value) set to NaN, inf or a negative scale.
    if name != "sparsify":  # its payload starts with the mask
        for poison in (np.nan, np.inf):
            with pytest.raises(PayloadError):
                compressor.decompress(np.asarray(poison, "<f4").tobytes() + payload[4:], size)


@pytest.mark.parametrize("name", NAMES)
def test_no_corruption_decodes_to_non_finite_values(name: str) -> None:
    compressor = make(name)
    size = 64
    payload = bytearray(compress(compressor, vector(size)).payload)
    for offset in range(0, len(payload) - 3, 4):
        for poison in (np.nan, np.inf):
            corrupted = bytes(payload[:offset]) + np.asarray(poison, "<f4").tobytes() + bytes(payload[offset + 4 :])
            try:
                decoded = compressor.decompress(corrupted, size)
            except PayloadError:
                continue
            assert np.all(np.isfinite(decoded))


@pytest.mark.parametrize("name", NAMES)
def test_spec_rebuilds_an_equal_compressor(name: str) -> None:
    compressor = make(name)
    assert compressor_from_spec(compressor.spec()) == compressor
    assert compressor.spec().split()[0] == name


@pytest.mark.parametrize("name", NAMES)
def test_zero_vector_sends_zeros(name: str) -> None:
    compressor = make(name)
    compressed = compress(compressor, np.zeros(10, np.float32))
    np.testing.assert_array_equal(compressor.decompress(compressed.payload, 10), np.zeros(10))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_worker_gradient_in_any_byte_order_reaches_the_server_unchanged(algorithm: str) -> None:
    config = AlgorithmConfig(algorithm=algorithm, bits=8, density=1.0)
    grad = np.array([1.5, -2.25, 3.0], np.float32)
    copies = []
    for gradient in (grad, grad.astype(">f4")):
        server = ServerState(np.zeros(3, np.float32), config, num_workers=1)
        worker = WorkerState.zeros(3)
        parts = WorkerParts(server.compressor, server.memory, config.rule.worker)
        payload = worker_round(worker, gradient, parts, server.instruction(0), rng=compression_rng(0, 0, 0))
        server.accept(0, payload)
        np.testing.assert_array_equal(server.copies[0], worker.copy)
        copies.append(server.copies[0])
    np.testing.assert_array_equal(copies[0], copies[1])
    if config.compressor().name == "identity":
        np.testing.assert_array_equal(copies[1], [1.5, -2.25, 3.0])
