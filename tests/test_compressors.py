"""The Table 3 baselines' compressors: QSGD's stochastic quantizer and random sparsification."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.codec import PayloadError
from laq_fl.compressors import (
    Compressor,
    compression_rng,
    qsgd_levels,
    qsgd_quantize,
    sparsify,
    sparsify_probabilities,
)
from laq_fl.config import AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.problem import build_problem
from laq_fl.run_config import parse_run_config
from laq_fl.server import ServerMemory
from laq_fl.worker import WorkerMemory


def gradient(size: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Heavy-tailed, with exact zeros, like a gradient over partly blank MNIST pixels.
    grad = rng.standard_t(2, size).astype(np.float32)
    grad[rng.random(size) < 0.2] = 0.0
    return grad


def round_trip(compressor: Compressor, grad: np.ndarray, rng: np.random.Generator):
    quantization = compressor.compress(grad, np.zeros_like(grad), rng)
    blob = compressor.to_bytes(compressor.encode(quantization))
    upload = compressor.from_bytes(blob)
    return quantization, blob, upload, compressor.decode(upload, None, grad.size, grad.dtype)


@pytest.mark.parametrize("bits", range(2, 17))
def test_qsgd_error_bound_codes_and_round_trip(bits: int) -> None:
    grad = gradient()
    compressor = Compressor("qsgd", bits)
    quantization, blob, upload, decoded = round_trip(compressor, grad, compression_rng(0, 1, 2))
    s = qsgd_levels(bits)
    assert quantization.levels.min() >= 0 and quantization.levels.max() <= 2 * s
    norm = float(np.linalg.norm(grad.astype(np.float64)))
    # One grid step of ||g||_2 / s at most, plus float32 rounding of the value.
    assert np.max(np.abs(quantization.error)) <= norm / s * (1 + 1e-6) + 1e-6 * np.max(np.abs(grad))
    np.testing.assert_array_equal(decoded, quantization.value)
    assert len(blob) == 4 + (bits * grad.size + 7) // 8
    assert compressor.payload_bits(upload, grad.size) == 32 + bits * grad.size
    # Signs survive: a coordinate never flips sign, zeros stay zero.
    assert np.all(quantization.value * grad >= 0)
    assert np.all(quantization.value[grad == 0] == 0)


@pytest.mark.parametrize(
    "compress",
    [
        lambda grad, rng: qsgd_quantize(grad, 3, rng),
        lambda grad, rng: sparsify(grad, 0.3, rng),
    ],
    ids=["qsgd-3bit", "sparsify-0.3"],
)
def test_compressors_are_unbiased(compress) -> None:
    grad = gradient(40, seed=3)
    draws = 4000
    values = np.array([compress(grad, np.random.default_rng(seed)).value for seed in range(draws)], np.float64)
    spread = values.std(axis=0) / np.sqrt(draws)
    # Each coordinate's mean lies within 5 standard errors of g (and exactly at 0 where g = 0).
    assert np.all(np.abs(values.mean(axis=0) - grad) <= 5 * spread + 1e-6)
    assert not np.allclose(values[0], grad)  # the test is not vacuous: single draws are noisy


def test_sparsify_probabilities_meet_the_budget() -> None:
    grad = gradient(1000, seed=5)
    grad[:3] = 1e4  # a few huge coordinates must saturate at p = 1
    for density in (0.05, 0.3, 0.5, 0.79):
        probabilities = sparsify_probabilities(grad, density)
        assert probabilities.max() <= 1.0 and probabilities.min() >= 0.0
        assert probabilities.sum() == pytest.approx(density * grad.size, rel=1e-9)
        assert np.all(probabilities[:3] == 1.0)
        assert np.all(probabilities[grad == 0] == 0.0)
        unsaturated = (probabilities < 1) & (grad != 0)
        ratio = probabilities[unsaturated] / np.abs(grad[unsaturated])
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # p_i = lam |g_i| below saturation
    # Fewer nonzeros than the budget: every nonzero coordinate is sent as is.
    assert sparsify_probabilities(grad, 0.99).tolist() == (grad != 0).astype(float).tolist()


def test_sparsify_round_trip_counts_the_mask_and_the_values() -> None:
    grad = gradient(1001)
    compressor = Compressor("sparsify", density=0.25)
    quantization, blob, upload, decoded = round_trip(compressor, grad, compression_rng(0, 0, 0))
    sent = int(np.count_nonzero(quantization.levels))
    assert 0 < sent < grad.size
    np.testing.assert_array_equal(decoded, quantization.value)
    assert len(blob) == (grad.size + 7) // 8 + 4 * sent
    assert compressor.payload_bits(upload, grad.size) == grad.size + 32 * sent


def test_malformed_baseline_uploads_are_rejected() -> None:
    grad = gradient(64)
    sparse = Compressor("sparsify", density=0.5)
    _, blob, _, _ = round_trip(sparse, grad, compression_rng(0, 0, 0))
    with pytest.raises(PayloadError):
        sparse.decode(sparse.from_bytes(blob[:-1]), None, grad.size, np.float32)
    with pytest.raises(PayloadError):
        sparse.decode(sparse.from_bytes(blob[:3]), None, grad.size, np.float32)
    nan_blob = blob[:8] + np.float32(np.nan).tobytes() + blob[12:]
    with pytest.raises(PayloadError):
        sparse.decode(sparse.from_bytes(nan_blob), None, grad.size, np.float32)

    qsgd = Compressor("qsgd", 2)
    _, blob, _, _ = round_trip(qsgd, grad, compression_rng(0, 0, 0))
    invalid_code = blob[:4] + b"\xff" + blob[5:]  # code 3 > 2s = 2 for two bits
    with pytest.raises(PayloadError):
        qsgd.decode(qsgd.from_bytes(invalid_code), None, grad.size, np.float32)
    with pytest.raises(PayloadError):
        qsgd.decode(qsgd.from_bytes(blob + b"\x00"), None, grad.size, np.float32)


def test_zero_gradient_sends_zeros() -> None:
    zeros = np.zeros(10, np.float32)
    for compressor in (Compressor("qsgd", 3), Compressor("sparsify", density=0.5)):
        _, _, _, decoded = round_trip(compressor, zeros, compression_rng(0, 0, 0))
        assert np.all(decoded == 0) and np.all(np.isfinite(decoded))


def test_compression_draws_depend_on_seed_worker_and_iteration() -> None:
    grad = gradient(500)
    compressor = Compressor("qsgd", 3)
    draw = lambda *key: compressor.compress(grad, np.zeros_like(grad), compression_rng(*key)).value  # noqa: E731
    np.testing.assert_array_equal(draw(0, 1, 2), draw(0, 1, 2))
    for other in ((1, 1, 2), (0, 2, 2), (0, 1, 3)):
        assert not np.array_equal(draw(0, 1, 2), draw(*other))
    with pytest.raises(ValueError, match="rng"):
        compressor.compress(grad, np.zeros_like(grad))


def test_baseline_settings_are_validated() -> None:
    with pytest.raises(ConfigError) as error:
        AlgorithmConfig(algorithm="qsgd", bits=1)
    assert error.value.key == "bits"
    with pytest.raises(ConfigError) as error:
        AlgorithmConfig(algorithm="qsgd", bits=32)
    assert error.value.key == "bits"
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError) as error:
            parse_run_config({"algorithm": "ssgd", "density": density})
        assert error.value.key == "density"
    assert AlgorithmConfig(algorithm="ssgd", density=0.3).compressor == Compressor("sparsify", 32, 0.3)
    assert AlgorithmConfig(algorithm="qsgd", bits=3).compressor == Compressor("qsgd", 3)
    assert AlgorithmConfig(algorithm="sgd", bits=3).compressor == Compressor("none", 32)


@pytest.mark.parametrize(("algorithm", "bits"), [("qsgd", 3), ("qsgd", 8), ("ssgd", 32)])
def test_baselines_run_on_the_shared_machinery(algorithm: str, bits: int) -> None:
    problem = build_problem(ProblemConfig(dataset="synthetic", num_workers=4, partition="iid"))
    config = AlgorithmConfig(algorithm=algorithm, bits=bits, lr=0.05, batch_size=64, density=0.4)

    def check(k: int, server: ServerMemory, workers: list[WorkerMemory]) -> None:
        copies = np.sum([server.copies[m].astype(np.float64) for m in range(len(workers))], axis=0)
        np.testing.assert_allclose(server.aggregate, copies, rtol=1e-12, atol=1e-12)
        for m, worker in enumerate(workers):
            np.testing.assert_array_equal(server.copies[m], worker.q_hat)

    result = run_in_process(config, problem, 30, on_iteration=check)
    sgd = run_in_process(AlgorithmConfig(algorithm="sgd", lr=0.05, batch_size=64), problem, 30)
    assert result.total_uploads == 30 * 4  # not lazy: every worker, every round
    start = result.records[0].train_loss
    # Unbiased compression descends nearly as far as SGD on the same minibatches.
    assert start - result.records[-1].train_loss > 0.7 * (start - sgd.records[-1].train_loss) > 0
    assert result.total_bits < sgd.total_bits
    assert not np.array_equal(result.theta, sgd.theta)
    if algorithm == "qsgd":
        assert result.total_bits == 30 * 4 * (32 + bits * problem.size)
    again = run_in_process(config, problem, 30)
    np.testing.assert_array_equal(again.theta, result.theta)  # seeded draws: reproducible
