"""Skip rules: the threshold, each worker half against an independent computation, (7b), and the server half."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.compressors import Grid, Identity
from laq_fl.config import ALGORITHMS, AlgorithmConfig, AlgorithmSpec, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.memory import ErrorFeedback, NoMemory, ReferenceCopy
from laq_fl.problem import build_problem
from laq_fl.server_state import ServerState
from laq_fl.skip_rules import (
    RULES,
    ForcedAfter,
    InnovationTest,
    Instruction,
    SameSampleTest,
    ServerHalf,
    SharedThreshold,
    SkipRule,
    default_xi,
    lazy_threshold,
)
from conftest import assert_same_bits
from laq_fl.worker import WorkerParts, WorkerState, local_round, worker_round

THETA_HAT = SameSampleTest.theta_hat.name
RESIDUAL = ErrorFeedback.residual.name

LAQ4 = WorkerParts(Grid(4), ReferenceCopy(), InnovationTest())
WK2 = WorkerParts(Grid(4), ReferenceCopy(), SameSampleTest())


def test_threshold_hand_computed() -> None:
    # alpha = 0.5, M = 2 -> 1 / (alpha^2 M^2) = 1; xi = (0.3, 0.2, 0.1)
    # newest differences first: 4, 9 -> 0.3 * 4 + 0.2 * 9 + 0.1 * 0 (missing) = 3.0
    assert lazy_threshold([4.0, 9.0], (0.3, 0.2, 0.1), lr=0.5, num_workers=2) == pytest.approx(3.0)
    # alpha = 0.02, M = 10 -> factor 1 / 0.04 = 25; xi = 0.08 * 10; diffs 1e-4 each -> 25 * 0.8 * 1e-4 = 2e-3
    assert lazy_threshold([1e-4] * 12, default_xi(), lr=0.02, num_workers=10) == pytest.approx(2e-3)


def test_warmup_spreads_the_weights_over_existing_differences() -> None:
    # Two differences exist, D = 3, sum xi = 0.6: each gets 0.3 -> 0.3 * 4 + 0.3 * 9 = 3.9 (the paper: 3.0)
    assert lazy_threshold([4.0, 9.0], (0.3, 0.2, 0.1), lr=0.5, num_workers=2, warmup=True) == pytest.approx(3.9)
    full = [4.0, 9.0, 1.0]
    assert lazy_threshold(full, (0.3, 0.2, 0.1), 0.5, 2, warmup=True) == pytest.approx(0.3 * 4 + 0.2 * 9 + 0.1)
    assert lazy_threshold([], (0.3, 0.2, 0.1), 0.5, 2, warmup=True) == 0.0
    config = AlgorithmConfig(algorithm="laq", lr=0.5, xi=(0.3, 0.2, 0.1), xi_warmup=True)
    server = ServerState(np.zeros(2, np.float64), config, 2)
    server.recent_sq_diffs.extend([4.0, 9.0])
    server.commit(0, np.zeros(2))
    assert server.instruction(0).threshold == pytest.approx(3.9)


def test_server_threshold_from_its_iterates() -> None:
    config = AlgorithmConfig(algorithm="lag", lr=0.5, xi=(0.3, 0.2))
    server = ServerState(np.zeros(2, np.float64), config, num_workers=2)
    assert server.instruction(0).threshold == 0.0
    server.aggregate[:] = [2.0, 0.0]  # step -1 along x: ||diff||^2 = 1
    server.step()
    server.aggregate[:] = [0.0, 4.0]  # step -2 along y: ||diff||^2 = 4
    server.step()
    assert list(server.recent_sq_diffs) == [4.0, 1.0]
    assert server.instruction(0).threshold == pytest.approx(0.3 * 4 + 0.2 * 1)


def seven_a(grad: np.ndarray, state: WorkerState, bits: int) -> tuple[float, float]:
    """(7a) written out independently: (||Q - Q_hat||^2, 3 (||g - Q||^2 + ||eps_hat||^2)) with Q from eq. (5)-(6)."""
    g = grad.astype(np.float64)
    q_hat = state.copy.astype(np.float64)
    innovation = g - q_hat
    radius = float(np.float32(np.abs(innovation).max()))
    tau = 1.0 / (2**bits - 1)
    levels = np.clip(np.floor((innovation + radius) / (2 * tau * radius) + 0.5), 0, 2**bits - 1)
    q = (q_hat + (2 * tau * radius * levels - radius)).astype(state.copy.dtype).astype(np.float64)
    return float(np.sum((q - q_hat) ** 2)), 3.0 * (float(np.sum((g - q) ** 2)) + state.last_error_sq)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_worker_applies_seven_a_on_both_sides_of_the_boundary(bits: int) -> None:
    rng = np.random.default_rng(bits)
    parts = WorkerParts(Grid(bits), ReferenceCopy(), InnovationTest())
    for _ in range(5):
        q_hat = rng.normal(size=50).astype(np.float32)
        grad = (q_hat + rng.normal(size=50) * 2.0).astype(np.float32)
        state = WorkerState(copy=q_hat, last_error_sq=float(rng.uniform(0.01, 0.1)))
        lhs, errors = seven_a(grad, state, bits)
        assert lhs > errors  # the threshold decides: the boundary is at threshold = lhs - errors > 0
        for threshold, expect_skip in ((lhs - errors) * (1 + 1e-9), True), ((lhs - errors) * (1 - 1e-9), False):
            trial = WorkerState(copy=q_hat.copy(), last_error_sq=state.last_error_sq)
            payload = worker_round(trial, grad, parts, Instruction(threshold, force_upload=False))
            assert (payload is None) == expect_skip


def test_skip_leaves_the_state_unchanged() -> None:
    state = WorkerState(copy=np.array([1.0, 2.0], np.float32), last_error_sq=0.5, version=3)
    assert worker_round(state, np.array([1.0, 2.0], np.float32), LAQ4, Instruction(threshold=1.0, force_upload=False)) is None
    np.testing.assert_array_equal(state.copy, [1.0, 2.0])
    assert state.last_error_sq == 0.5 and state.version == 3


def test_forced_after_t_bar_skips() -> None:
    t_bar = 4
    config = AlgorithmConfig(algorithm="laq", bits=8, xi=(0.1,), t_bar=t_bar)
    server = ServerState(np.zeros(3, np.float32), config, num_workers=1)
    state = WorkerState.zeros(3)
    grad = np.array([1.0, -2.0, 3.0], np.float32)  # a constant gradient: nothing new after the first upload
    pattern = []
    for _ in range(11):
        payload = worker_round(state, grad, WorkerParts(Grid(8), ReferenceCopy(), InnovationTest()), server.instruction(0))
        pattern.append(payload is not None)
        if payload is None:
            server.skip(0)
        else:
            server.accept(0, payload)
    # first round forced (no copy yet), then t_bar skips, then forced, ...
    assert pattern == [True, False, False, False, False, True, False, False, False, False, True]
    assert server.record(0).version == state.version == 3


def parts_of(server: ServerState) -> WorkerParts:
    return WorkerParts(server.compressor, server.memory, server.config.rule.worker)


@pytest.mark.parametrize("name", [name for name, spec in ALGORITHMS.items() if not spec.lazy])
def test_non_lazy_members_always_upload(name: str) -> None:
    server = ServerState(np.zeros(3, np.float32), AlgorithmConfig(algorithm=name, bits=4), num_workers=1)
    state = WorkerState.zeros(3)
    grad = np.ones(3, np.float32)
    for k in range(3):  # the same gradient again: a lazy rule would skip
        payload = worker_round(state, grad, parts_of(server), server.instruction(0), same_sample_change=0.0,
                               rng=np.random.default_rng(k))
        assert payload is not None
        server.accept(0, payload)
    assert server.record(0).version == state.version == 3


@pytest.mark.parametrize("name", [name for name, spec in ALGORITHMS.items() if spec.lazy and spec.rule != "ps"])
def test_lazy_members_skip_once_a_copy_exists(name: str) -> None:
    server = ServerState(np.zeros(3, np.float32), AlgorithmConfig(algorithm=name, bits=4), num_workers=1)
    first = server.instruction(0)
    assert first.force_upload and first.reset  # no copy: upload from Q_hat = 0 whatever the worker holds
    state = WorkerState.zeros(3)
    grad = np.ones(3, np.float32)
    server.accept(0, worker_round(state, grad, parts_of(server), first, rng=np.random.default_rng(0)))
    server.recent_sq_diffs.append(1.0)  # theta moved: a positive threshold
    second = server.instruction(0)
    assert not second.force_upload and not second.reset and second.threshold > 0
    # The same gradient (and, for the same-sample rule, no change on the minibatch): nothing new, so skip.
    assert worker_round(state, grad, parts_of(server), second, same_sample_change=0.0, rng=np.random.default_rng(1)) is None


def test_a_resync_overrides_any_server_half() -> None:
    """A lost reply is followed by a reset upload even when the rule's server half would not contact the worker."""
    server = ServerState(np.zeros(3, np.float32), AlgorithmConfig(algorithm="lag", t_bar=5), num_workers=1)
    server.rule = ForcedAfter(EveryOtherRound(), t_bar=1)
    worker = WorkerState.zeros(3)
    parts = parts_of(server)
    rng = np.random.default_rng(0)
    server.accept(0, worker_round(worker, rng.normal(size=3).astype(np.float32), parts, server.instruction(0)))
    server.step()  # iteration 1: the half leaves the worker alone
    assert server.instruction(0) is None
    server.skip(0)
    server.step()  # iteration 2: contacted, the worker moves its copy, the reply is lost
    worker_round(worker, rng.normal(size=3).astype(np.float32), parts, server.instruction(0))
    server.lost(0)
    server.step()  # iteration 3: the half would send a plain forced upload; the server makes it a reset
    instruction = server.instruction(0)
    assert instruction.force_upload and instruction.reset
    server.accept(0, worker_round(worker, rng.normal(size=3).astype(np.float32), parts, instruction))
    assert_same_bits(server.copies[0], worker.copy)
    assert server.record(0).version == worker.version == 1


def test_worker_state_round_trips_through_arrays() -> None:
    state = WorkerState(copy=np.arange(4, dtype=np.float32), last_error_sq=0.25, version=7,
                        held={THETA_HAT: np.ones(4, np.float32), RESIDUAL: np.full(4, 0.5)})
    back = WorkerState.from_arrays({key: value.copy() for key, value in state.to_arrays().items()})
    np.testing.assert_array_equal(back.copy, state.copy)
    assert sorted(back.held) == sorted(state.held)
    for name, value in state.held.items():
        assert_same_bits(back.held[name], value)
    assert back.copy.dtype == np.float32 and back.last_error_sq == 0.25 and back.version == 7
    assert THETA_HAT not in WorkerState.zeros(3).to_arrays()
    state.reset()
    assert state.held == {} and state.version == 0 and not state.copy.any()


def test_forget_restores_invariant_and_forces_a_reset() -> None:
    config = AlgorithmConfig(algorithm="lag", xi=(0.1,))
    server = ServerState(np.zeros(2, np.float32), config, num_workers=2)
    server.accept("a", np.array([1, 2], "<f4").tobytes())
    server.accept("b", np.array([3, 4], "<f4").tobytes())
    server.forget("a")
    np.testing.assert_allclose(server.aggregate, [3, 4])
    assert server.instruction("a").force_upload and server.instruction("a").reset
    assert not server.instruction("b").force_upload


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
    state = WorkerState.zeros(5)
    theta = np.ones(5, np.float32)
    _, payload = local_round(state, oracle, theta, WK2, Instruction(0.0, force_upload=True), batch=np.arange(10))
    assert payload is not None
    np.testing.assert_array_equal(state.held[THETA_HAT], theta)
    # Same theta, another minibatch: (7a) would see a large innovation; the same-sample test sees none.
    assert local_round(state, oracle, theta, WK2, Instruction(0.0, False), batch=np.arange(50, 60))[1] is None
    copy = WorkerState(state.copy.copy(), state.last_error_sq)
    assert local_round(copy, oracle, theta, LAQ4, Instruction(0.0, False), batch=np.arange(50, 60))[1] is not None
    # A parameter move of norm^2 = 5 changes the same-sample gradient by exactly that: the threshold decides.
    moved = theta + 1.0
    assert local_round(state, oracle, moved, WK2, Instruction(5.01, False), batch=np.arange(20, 30))[1] is None
    assert local_round(state, oracle, moved, WK2, Instruction(4.99, False), batch=np.arange(20, 30))[1] is not None
    np.testing.assert_array_equal(state.held[THETA_HAT], moved)


class EveryOtherRound(ServerHalf):
    """A server-side rule for the test: contact a worker only in even iterations."""

    def instruct(self, server, worker):
        if server.iteration % 2 and worker.copy is not None:
            return None
        return Instruction(0.0, force_upload=True, reset=worker.copy is None)


def test_a_server_half_may_leave_workers_alone(monkeypatch) -> None:
    rule = SkipRule("every-other-round", RULES["never"].worker, lambda settings: EveryOtherRound())
    monkeypatch.setitem(RULES, rule.name, rule)
    monkeypatch.setitem(ALGORITHMS, "sometimes-gd", AlgorithmSpec("sometimes-gd", "identity", "none", rule.name))
    problem = build_problem(ProblemConfig(dataset="synthetic", num_workers=3, partition="iid"))
    result = run_in_process(AlgorithmConfig(algorithm="sometimes-gd", t_bar=5), problem, 10)
    assert result.column("uploads").tolist() == [3, 0] * 5
    assert isinstance(rule.server(AlgorithmConfig(algorithm="gd").rule_settings(3)), ForcedAfter)


def test_forced_after_turns_no_contact_into_a_forced_upload() -> None:
    server = ServerState(np.zeros(2, np.float32), AlgorithmConfig(algorithm="gd"), 1)
    server.commit(0, np.zeros(2, np.float32))
    server.iteration = 1
    wrapped = ForcedAfter(EveryOtherRound(), t_bar=2)
    assert wrapped.instruct(server, server.record(0)) is None
    server.record(0).skip_clock = 2
    assert wrapped.instruct(server, server.record(0)) == Instruction(0.0, force_upload=True)
    server.recent_sq_diffs.extend([4.0])
    assert SharedThreshold((0.5,), 1.0, 2).instruct(server, server.record(0)) == Instruction(0.5 * 4.0 / 4, force_upload=False)


def test_gd_parts_are_identity_and_no_memory() -> None:
    config = AlgorithmConfig(algorithm="laq", bits=32)
    assert config.compressor() == Identity() and isinstance(config.memory, NoMemory)


def test_error_feedback_with_a_lazy_rule_is_refused() -> None:
    # On a skip nothing moves, so a skipped gradient would be neither sent nor kept in the residual.
    with pytest.raises(ValueError, match="never skips"):
        AlgorithmSpec("lazy-ef", "scaled-sign", "error-feedback", "innovation")


def test_ps_contacts_a_worker_only_when_its_iterate_moved_enough() -> None:
    """LAG-PS: no message while L^2 ||theta^k - theta_hat_m||^2 <= threshold; a message once it exceeds it."""
    config = AlgorithmConfig(algorithm="lag-ps", lr=0.5, xi=(1.0,), smoothness=2.0, t_bar=50)
    server = ServerState(np.zeros(2, np.float32), config, num_workers=1)
    state = WorkerState.zeros(2)
    server.accept(0, worker_round(state, np.ones(2, np.float32), parts_of(server), server.instruction(0)))
    assert_same_bits(server.record(0).upload_iterate, np.zeros(2, np.float32))
    server.step()  # theta moves by -0.5 * (1, 1): ||d||^2 = 0.5, threshold = 0.5 / (0.25 * 1) = 2
    threshold = 0.5 / 0.25
    moved_sq = 0.5
    assert 2.0**2 * moved_sq <= threshold  # L^2 ||theta - theta_hat||^2 = 2.0: exactly at the threshold, skip
    assert server.instruction(0) is None
    server.theta = server.theta * 2  # as if theta had moved twice as far: 4 * 2.0 = 8 > 2
    contacted = server.instruction(0)
    assert contacted is not None and not contacted.force_upload and contacted.threshold == pytest.approx(threshold)


def test_ps_estimates_smoothness_from_two_uploads_and_forces_after_t_bar() -> None:
    config = AlgorithmConfig(algorithm="lag-ps", lr=0.1, t_bar=2)
    server = ServerState(np.zeros(2, np.float32), config, num_workers=1)
    state = WorkerState.zeros(2)
    parts = parts_of(server)
    server.accept(0, worker_round(state, np.array([1.0, 0.0], np.float32), parts, server.instruction(0)))
    server.step()
    assert server.record(0).smoothness is None and server.instruction(0) is not None  # no estimate yet: contacted
    server.accept(0, worker_round(state, np.array([1.0, 3.0], np.float32), parts, server.instruction(0)))
    moved = float(np.linalg.norm(server.record(0).upload_iterate.astype(np.float64)))  # theta_hat: 0 -> theta^1
    assert server.record(0).smoothness == pytest.approx(3.0 / moved)
    for _ in range(2):  # theta frozen: nothing moved, so the worker is left alone until (7b)
        server.aggregate[:] = 0.0
        server.step()
        assert server.instruction(0) is None
        server.skip(0)
    forced = server.instruction(0)
    assert forced is not None and forced.force_upload
