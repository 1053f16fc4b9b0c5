"""Rule (7a)-(7b): the threshold, the skip test and the forced upload."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.codec import Upload
from laq_fl.compressors import Compressor
from laq_fl.config import RULE_LAQ, RULE_SAME_SAMPLE, AlgorithmConfig
from laq_fl.rule import default_xi, lazy_threshold, may_skip, upload_forced
from laq_fl.server import ServerMemory
from laq_fl.worker import THETA_HAT_KEY, Instruction, WorkerMemory, local_round, worker_round

LAQ4 = Compressor("laq", 4)


def test_threshold_hand_computed() -> None:
    # alpha = 0.5, M = 2 -> 1 / (alpha^2 M^2) = 1; xi = (0.3, 0.2, 0.1)
    # newest differences first: 4, 9 -> 0.3 * 4 + 0.2 * 9 + 0.1 * 0 (missing) = 3.0
    assert lazy_threshold([4.0, 9.0], (0.3, 0.2, 0.1), lr=0.5, num_workers=2) == pytest.approx(3.0)
    # alpha = 0.02, M = 10 -> factor 1 / 0.04 = 25; xi = 0.08 * 10; diffs 1e-4 each -> 25 * 0.8 * 1e-4 = 2e-3
    assert lazy_threshold([1e-4] * 12, default_xi(), lr=0.02, num_workers=10) == pytest.approx(2e-3)


def test_warmup_spreads_the_weights_over_existing_differences() -> None:
    # Two differences exist, D = 3, sum xi = 0.6: each gets 0.3 -> 0.3 * 4 + 0.3 * 9 = 3.9 (the paper: 3.0)
    assert lazy_threshold([4.0, 9.0], (0.3, 0.2, 0.1), lr=0.5, num_workers=2, warmup=True) == pytest.approx(3.9)
    # Once D differences exist, the warm-up changes nothing.
    full = [4.0, 9.0, 1.0]
    assert lazy_threshold(full, (0.3, 0.2, 0.1), 0.5, 2, warmup=True) == lazy_threshold(full, (0.3, 0.2, 0.1), 0.5, 2)
    assert lazy_threshold([], (0.3, 0.2, 0.1), 0.5, 2, warmup=True) == 0.0
    server = ServerMemory(np.zeros(2, np.float64), AlgorithmConfig(algorithm="laq", lr=0.5, xi=(0.3, 0.2, 0.1), xi_warmup=True), 2)
    server.recent_sq_diffs.extend([4.0, 9.0])
    assert server.threshold() == pytest.approx(3.9)


def test_server_threshold_from_its_iterates() -> None:
    config = AlgorithmConfig(algorithm="lag", lr=0.5, xi=(0.3, 0.2))
    server = ServerMemory(np.zeros(2, np.float64), config, num_workers=2)
    assert server.threshold() == 0.0
    server.aggregate[:] = [2.0, 0.0]  # step -1 along x: ||diff||^2 = 1
    server.step()
    server.aggregate[:] = [0.0, 4.0]  # step -2 along y: ||diff||^2 = 4
    server.step()
    assert list(server.recent_sq_diffs) == [4.0, 1.0]
    assert server.threshold() == pytest.approx(0.3 * 4 + 0.2 * 1)


def test_skip_test_includes_both_errors() -> None:
    assert may_skip(innovation_sq=10.0, threshold=4.0, error_sq=1.0, last_error_sq=1.0)
    assert not may_skip(innovation_sq=10.0001, threshold=4.0, error_sq=1.0, last_error_sq=1.0)


def test_forced_exactly_after_t_bar_skips() -> None:
    assert [upload_forced(t, 3) for t in range(5)] == [False, False, False, True, True]


def test_clock_forces_upload_every_t_bar_plus_one_rounds() -> None:
    t_bar = 4
    config = AlgorithmConfig(algorithm="laq", bits=8, xi=(0.1,), t_bar=t_bar)
    server = ServerMemory(np.zeros(3, np.float32), config, num_workers=1)
    memory = WorkerMemory.zeros(3)
    grad = np.array([1.0, -2.0, 3.0], np.float32)  # a constant gradient: nothing new after the first upload
    pattern = []
    for _ in range(11):
        upload = worker_round(memory, grad, config.compressor, server.instruction(0))
        pattern.append(upload is not None)
        if upload is None:
            server.skip(0)
        else:
            server.accept(0, upload)
    # first round forced (no copy yet), then t_bar skips, then forced, ...
    assert pattern == [True, False, False, False, False, True, False, False, False, False, True]


@pytest.mark.parametrize("name", ["gd", "qgd", "sgd", "qsgd", "ssgd"])
def test_non_lazy_members_always_upload(name: str) -> None:
    server = ServerMemory(np.zeros(3, np.float32), AlgorithmConfig(algorithm=name, bits=4), num_workers=1)
    upload = worker_round(
        WorkerMemory.zeros(3), np.ones(3, np.float32), server.config.compressor, server.instruction(0),
        rng=np.random.default_rng(0),
    )
    assert upload is not None
    server.accept(0, upload)
    # A constant gradient would be skipped by a lazy rule; these members upload anyway.
    assert server.instruction(0).force_upload


@pytest.mark.parametrize("name", ["lag", "laq", "slaq"])
def test_lazy_members_may_skip_once_a_copy_exists(name: str) -> None:
    server = ServerMemory(np.zeros(3, np.float32), AlgorithmConfig(algorithm=name, bits=4), num_workers=1)
    assert server.instruction(0).force_upload
    upload = worker_round(WorkerMemory.zeros(3), np.ones(3, np.float32), server.config.compressor, server.instruction(0))
    server.accept(0, upload)
    assert not server.instruction(0).force_upload


def test_worker_skip_leaves_memory_unchanged() -> None:
    memory = WorkerMemory(q_hat=np.array([1.0, 2.0], np.float32), last_error_sq=0.5)
    upload = worker_round(memory, np.array([1.0, 2.0], np.float32), LAQ4, Instruction(threshold=1.0, force_upload=False))
    assert upload is None
    np.testing.assert_array_equal(memory.q_hat, [1.0, 2.0])
    assert memory.last_error_sq == 0.5


def test_worker_memory_round_trips_through_arrays() -> None:
    memory = WorkerMemory(q_hat=np.arange(4, dtype=np.float32), last_error_sq=0.25)
    back = WorkerMemory.from_arrays({key: value.copy() for key, value in memory.to_arrays().items()})
    np.testing.assert_array_equal(back.q_hat, memory.q_hat)
    assert back.q_hat.dtype == np.float32 and back.last_error_sq == 0.25


def test_forget_restores_invariant_and_forces() -> None:
    config = AlgorithmConfig(algorithm="lag", xi=(0.1,))
    server = ServerMemory(np.zeros(2, np.float32), config, num_workers=2)
    server.accept("a", Upload(np.array([1, 2], np.float32).tobytes(), 0.0))
    server.accept("b", Upload(np.array([3, 4], np.float32).tobytes(), 0.0))
    server.forget("a")
    np.testing.assert_allclose(server.aggregate, [3, 4])
    assert server.instruction("a").force_upload and not server.instruction("b").force_upload


class QuadraticOracle:
    """grad of 0.5 ||theta - target_batch||^2: on one batch the gradient changes exactly with theta."""

    def __init__(self, targets: np.ndarray) -> None:
        self.targets = targets

    def loss_and_gradient(self, theta: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        target = self.targets[batch].mean(axis=0) if batch is not None else self.targets.mean(axis=0)
        grad = (theta - target).astype(np.float32)
        return 0.5 * float(np.dot(grad, grad)), grad


def test_same_sample_rule_ignores_sampling_noise() -> None:
    rng = np.random.default_rng(0)
    oracle = QuadraticOracle(rng.normal(size=(100, 5)).astype(np.float32) * 10)  # very noisy minibatches
    memory = WorkerMemory.zeros(5)
    theta = np.ones(5, np.float32)
    _, upload = local_round(memory, oracle, theta, np.arange(10), LAQ4, RULE_SAME_SAMPLE, Instruction(0.0, force_upload=True))
    assert upload is not None
    np.testing.assert_array_equal(memory.theta_hat, theta)
    # Same theta, a different minibatch: (7a) would see a large innovation; the same-sample test sees none.
    _, upload = local_round(memory, oracle, theta, np.arange(50, 60), LAQ4, RULE_SAME_SAMPLE, Instruction(0.0, False))
    assert upload is None
    _, upload = local_round(WorkerMemory(memory.q_hat.copy(), memory.last_error_sq), oracle, theta, np.arange(50, 60), LAQ4,
                            RULE_LAQ, Instruction(0.0, False))
    assert upload is not None
    # A parameter move of norm^2 = 5 changes the same-sample gradient by exactly that: threshold decides.
    moved = theta + 1.0
    assert local_round(memory, oracle, moved, np.arange(20, 30), LAQ4, RULE_SAME_SAMPLE, Instruction(5.01, False))[1] is None
    assert local_round(memory, oracle, moved, np.arange(20, 30), LAQ4, RULE_SAME_SAMPLE, Instruction(4.99, False))[1] is not None
    np.testing.assert_array_equal(memory.theta_hat, moved)


def test_theta_hat_round_trips_and_resets() -> None:
    memory = WorkerMemory(q_hat=np.ones(3, np.float32), last_error_sq=1.0, theta_hat=np.arange(3, dtype=np.float32))
    back = WorkerMemory.from_arrays(memory.to_arrays())
    np.testing.assert_array_equal(back.theta_hat, memory.theta_hat)
    assert THETA_HAT_KEY not in WorkerMemory.zeros(3).to_arrays()
    memory.reset()
    assert memory.theta_hat is None and not memory.q_hat.any()
