"""What each compressor promises beyond the shared contract: codes, budgets, layouts, and the baselines' runs."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.codec import PayloadError
from laq_fl.compressors import (
    Grid,
    NonFiniteError,
    Qsgd,
    RandomSparsifier,
    ScaledSign,
    TernGrad,
    TopK,
    compression_rng,
    compressor_from_spec,
    sparsify_probabilities,
)
from laq_fl.config import AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.memory import ErrorFeedback, ReferenceCopy
from laq_fl.problem import build_problem
from laq_fl.run_config import parse_run_config
from laq_fl.server_state import ServerState
from laq_fl.skip_rules import Instruction, NeverSkip
from laq_fl.worker import WorkerParts, WorkerState, worker_round


def gradient(size: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grad = rng.standard_t(2, size).astype(np.float32)
    grad[rng.random(size) < 0.2] = 0.0
    return grad


@pytest.mark.parametrize("bits", range(1, 17))
def test_grid_error_bound_extremes_and_levels(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for scale in (1e-3, 1.0, 1e3):
        values = rng.normal(size=1000) * scale
        compressed = Grid(bits).compress(values)
        radius = float(np.frombuffer(compressed.payload[:4], "<f4")[0])
        assert radius == pytest.approx(np.max(np.abs(values)), rel=1e-7)
        tau = 1.0 / (2**bits - 1)
        assert np.max(np.abs(values - compressed.value)) <= tau * radius * (1 + 1e-6)
        # The coordinates of largest magnitude land on the ends of the grid: exactly -R or +R.
        extreme = np.argmax(np.abs(values))
        assert compressed.value[extreme] == pytest.approx(np.sign(values[extreme]) * radius, rel=1e-12)


def test_grid_more_bits_less_error() -> None:
    values = np.random.default_rng(2).normal(size=2000)
    errors = [np.sum((Grid(bits).compress(values).value - values) ** 2) for bits in (2, 4, 8, 12)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] * 1e-6


def test_grid_zero_innovation_has_zero_radius_and_no_nan() -> None:
    compressed = Grid(3).compress(np.zeros(101))
    assert compressed.payload[:4] == b"\x00\x00\x00\x00" and not np.any(compressed.value)


def test_grid_payload_layout_pinned() -> None:
    # x = (-1, 0, 1) at 2 bits: R = 1 -> levels floor((x + 1) * 3/2 + 1/2) = 0, 2, 3 -> 00 10 11 (00)
    assert Grid(2).compress(np.array([-1.0, 0.0, 1.0])).payload == b"\x00\x00\x80\x3f" + bytes([0b00101100])


@pytest.mark.parametrize("bits", range(2, 17))
def test_qsgd_codes_signs_and_size(bits: int) -> None:
    grad = gradient()
    compressed = Qsgd(bits).compress(grad, compression_rng(0, 1, 2))
    assert len(compressed.payload) == 4 + (bits * grad.size + 7) // 8
    assert np.all(compressed.value * grad >= 0) and np.all(compressed.value[grad == 0] == 0)


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
    assert sparsify_probabilities(grad, 0.99).tolist() == (grad != 0).astype(float).tolist()


def test_sparsify_counts_the_mask_and_the_values() -> None:
    grad = gradient(1001)
    compressor = RandomSparsifier(density=0.25)
    compressed = compressor.compress(grad, compression_rng(0, 0, 0))
    sent = int(np.count_nonzero(compressed.value))
    assert 0 < sent < grad.size
    assert len(compressed.payload) == (grad.size + 7) // 8 + 4 * sent
    assert compressor.payload_bits(compressed.payload, grad.size) == grad.size + 32 * sent


def test_terngrad_levels_are_ternary_and_scaled_by_the_max() -> None:
    grad = gradient(500)
    compressed = TernGrad().compress(grad, compression_rng(0, 0, 0))
    scale = np.float32(np.frombuffer(compressed.payload[:4], "<f4")[0])
    assert scale >= np.max(np.abs(grad)) and np.float32(np.nextafter(scale, np.float32(0))) < np.max(np.abs(grad))
    assert set(np.unique(compressed.value)) <= {-float(scale), 0.0, float(scale)}
    assert np.all(compressed.value * grad >= 0)


def test_scaled_sign_sends_the_mean_magnitude() -> None:
    values = np.array([3.0, -1.0, 0.0, -4.0])
    compressed = ScaledSign().compress(values)
    np.testing.assert_array_equal(compressed.value, [2.0, -2.0, 2.0, -2.0])  # ||v||_1 / p = 2, sgn(0) = +1
    assert compressed.payload == b"\x00\x00\x00\x40" + bytes([0b10100000])


def test_top_k_keeps_the_largest_and_pins_the_layout() -> None:
    values = np.array([0.5, -3.0, 0.0, 2.0, -0.25, 1.0, 0.0, 0.0, 0.0, 0.0])
    compressor = TopK(density=0.3)
    assert compressor.count(10) == 3
    compressed = compressor.compress(values)
    np.testing.assert_array_equal(compressed.value, [0, -3.0, 0, 2.0, 0, 1.0, 0, 0, 0, 0])
    expected = np.array([-3.0, 2.0, 1.0], "<f4").tobytes() + np.array([1, 3, 5], "<u4").tobytes()
    assert compressed.payload == expected
    assert compressor.payload_bits(compressed.payload, 10) == 3 * 64


@pytest.mark.parametrize(
    ("compressor", "size", "payload"),
    [
        (Qsgd(2), 1, b"\x00\x00\x80\x3f" + bytes([0b11000000])),  # code 3 > 2s = 2
        (TernGrad(), 1, b"\x00\x00\x80\x3f" + bytes([0b11000000])),  # code 3 is not a ternary level
        (TopK(density=0.5), 4, np.array([1, 2], "<f4").tobytes() + np.array([0, 4], "<u4").tobytes()),  # index 4 >= p
        (TopK(density=0.5), 4, np.array([1, 2], "<f4").tobytes() + np.array([2, 1], "<u4").tobytes()),  # not increasing
        (TopK(density=0.5), 4, np.array([1, 2], "<f4").tobytes() + np.array([1, 1], "<u4").tobytes()),  # duplicate
        (RandomSparsifier(density=0.5), 4, bytes([0b00001000])),  # the mask sets a padding bit
        (ScaledSign(), 4, b"\x00\x00\x80\x3f" + bytes([0b00001000])),  # a padding bit set
        (Grid(3), 4, b"\x00\x00\x80\xbf" + bytes(2)),  # negative radius
    ],
)
def test_codes_out_of_range_are_rejected(compressor, size: int, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        compressor.decompress(payload, size)


def test_error_feedback_keeps_what_was_not_sent() -> None:
    parts = WorkerParts(TopK(density=0.25), ErrorFeedback(), NeverSkip())
    state = WorkerState.zeros(8, np.float32)
    rng = np.random.default_rng(0)
    sent_total = np.zeros(8)
    grad_total = np.zeros(8)
    for _ in range(6):
        grad = rng.normal(size=8).astype(np.float32)
        worker_round(state, grad, parts, Instruction(0.0, force_upload=True))
        sent_total += state.copy
        grad_total += grad
        # Invariant (PowerSGD's orig == sent + error): every gradient so far is either sent or in the residual.
        np.testing.assert_allclose(sent_total + state.held["residual"], grad_total, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(state.held["residual"]) > 0


def test_baseline_settings_are_validated() -> None:
    for algorithm, bits in (("qsgd", 1), ("qsgd", 32), ("laq", 0), ("sgd", 17)):
        with pytest.raises(ConfigError) as error:
            AlgorithmConfig(algorithm=algorithm, bits=bits)
        assert error.value.key == "bits"
    for algorithm in ("ssgd", "dgc"):
        for density in (0.0, 1.5, -0.1):
            with pytest.raises(ConfigError) as error:
                parse_run_config({"algorithm": algorithm, "density": density})
            assert error.value.key == "density"
    assert AlgorithmConfig(algorithm="ssgd", density=0.3).compressor() == RandomSparsifier(0.3)
    assert AlgorithmConfig(algorithm="qsgd", bits=3).compressor() == Qsgd(3)
    assert AlgorithmConfig(algorithm="dgc", density=0.01).compressor() == TopK(0.01)
    assert AlgorithmConfig(algorithm="sgd", bits=3).compressor().name == "identity"
    assert AlgorithmConfig(algorithm="laq", bits=32).compressor().name == "identity"  # b = 32: LAQ runs as LAG
    assert AlgorithmConfig(algorithm="gd").compressor(np.float64).float_bits == 64


@pytest.mark.parametrize(
    ("algorithm", "bits", "density"),
    [("qsgd", 3, 0.4), ("qsgd", 8, 0.4), ("ssgd", 32, 0.4), ("terngrad", 4, 0.4), ("ef-signsgd", 4, 0.4), ("dgc", 4, 0.05)],
)
def test_baselines_run_on_the_shared_machinery(algorithm: str, bits: int, density: float) -> None:
    problem = build_problem(ProblemConfig(dataset="synthetic", num_workers=4, partition="iid"))
    config = AlgorithmConfig(algorithm=algorithm, bits=bits, lr=0.05, batch_size=64, density=density)

    def check(k: int, server: ServerState, workers: list[WorkerState]) -> None:
        copies = np.sum([server.copies[m].astype(np.float64) for m in range(len(workers))], axis=0)
        np.testing.assert_allclose(server.aggregate, copies, rtol=1e-12, atol=1e-12)
        for m, worker in enumerate(workers):
            np.testing.assert_array_equal(server.copies[m], worker.copy)

    result = run_in_process(config, problem, 30, on_iteration=check)
    sgd = run_in_process(AlgorithmConfig(algorithm="sgd", lr=0.05, batch_size=64), problem, 30)
    assert result.total_uploads == 30 * 4  # not lazy: every worker, every round
    start = result.records[0].train_loss
    # Compression with unbiased draws or error feedback descends nearly as far as SGD on the same minibatches.
    assert start - result.records[-1].train_loss > 0.7 * (start - sgd.records[-1].train_loss) > 0
    assert result.total_bits < sgd.total_bits
    assert not np.array_equal(result.theta, sgd.theta)
    again = run_in_process(config, problem, 30)
    np.testing.assert_array_equal(again.theta, result.theta)  # seeded draws: reproducible


def test_top_k_count_is_the_exact_ceiling_for_decimal_densities() -> None:
    assert [TopK(density).count(100) for density in (0.07, 0.14, 0.28, 0.55, 0.56, 0.071, 0.01)] == [7, 14, 28, 55, 56, 8, 1]


@pytest.mark.parametrize("compressor", [Grid(4), Qsgd(4)])
def test_bounds_hold_below_float32_range(compressor) -> None:
    values = np.array([1e-46, -3e-47, 0.0])
    compressed = compressor.compress(values, compression_rng(0, 0, 0))
    assert np.max(np.abs(compressed.value - values)) <= compressor.error_bound(values)


def test_a_decoder_that_raises_anything_becomes_a_payload_error() -> None:
    class Careless(Grid):
        def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
            return buffer.view("<f2").astype(np.float64)  # no length check: odd lengths raise ValueError

    with pytest.raises(PayloadError, match="could not decode"):
        Careless(4).decompress(b"\x00\x00\x00", 2)


def test_a_refused_gradient_changes_nothing_even_with_a_reset() -> None:
    state = WorkerState(copy=np.ones(3, np.float32), last_error_sq=0.5, version=4)
    parts = WorkerParts(Grid(4), ReferenceCopy(), NeverSkip())
    with pytest.raises(NonFiniteError):
        worker_round(state, np.array([np.nan, 0, 0], np.float32), parts, Instruction(0.0, force_upload=True, reset=True))
    np.testing.assert_array_equal(state.copy, 1.0)
    assert state.version == 4 and state.last_error_sq == 0.5


def test_specs_carry_plain_numbers() -> None:
    assert TopK(np.float64(0.1)).spec() == "top-k density=0.1"
    assert compressor_from_spec(Qsgd(np.int64(3)).spec()) == Qsgd(3)
