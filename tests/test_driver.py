"""The in-process driver: equivalences with plain (S)GD, the server invariant, and a real MNIST run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_same_bits
from torch.nn import functional as F

from laq_fl.arrays import to_numpy
from laq_fl.compressors import NonFiniteError
from laq_fl.config import ALGORITHMS, AlgorithmConfig, ProblemConfig
from laq_fl.data import minibatch_indices
from laq_fl.driver import run_in_process
from laq_fl.models import build_module
from laq_fl.problem import Problem, build_problem
from laq_fl.protocol import Sync
from laq_fl.server_state import ServerState
from laq_fl.worker import WorkerState

SYNTHETIC = ProblemConfig(dataset="synthetic", num_workers=4, partition="iid")


@pytest.fixture(scope="module")
def synthetic_problem() -> Problem:
    return build_problem(SYNTHETIC)


@pytest.fixture(scope="module")
def synthetic_tensor_problem() -> Problem:
    """The same problem on the device path (here the CPU): workers and server hold torch tensors."""
    problem = build_problem(SYNTHETIC)
    for objective in problem.objectives:
        objective.gradients_on_device = True
    return problem


def reference_gradient(model_name: str, theta: np.ndarray, features, labels, lam: float) -> np.ndarray:
    """grad f_m through an ordinary nn.Module with the regulariser written out, independent of FlatModel."""
    module = build_module(model_name)
    offset = 0
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.from_numpy(theta[offset : offset + param.numel()]).view_as(param))
            offset += param.numel()
    loss = F.cross_entropy(module(features), labels)
    loss = loss + 0.5 * lam * sum((param**2).sum() for param in module.parameters())
    loss.backward()
    return torch.cat([param.grad.reshape(-1) for param in module.parameters()]).numpy()


def plain_descent(problem: Problem, lr: float, iterations: int, batch_size: int | None = None) -> np.ndarray:
    """theta <- theta - alpha sum_m grad f_m(theta): eq. (2), or its minibatch version."""
    theta = problem.initial_theta.copy()
    for k in range(iterations):
        total = np.zeros_like(theta)
        for m, objective in enumerate(problem.objectives):
            features, labels = objective.features, objective.labels
            if batch_size is not None:
                index = torch.from_numpy(minibatch_indices(len(labels), batch_size, problem.config.seed, m, k))
                features, labels = features[index], labels[index]
            total += reference_gradient(problem.config.model, theta, features, labels, problem.config.lam)
        theta = theta - lr * total
    return theta


def test_gd_equals_plain_gradient_descent(synthetic_problem: Problem) -> None:
    result = run_in_process(AlgorithmConfig(algorithm="gd", lr=0.02), synthetic_problem, 25)
    expected = plain_descent(synthetic_problem, 0.02, 25)
    np.testing.assert_allclose(result.theta, expected, rtol=1e-5, atol=1e-6)
    assert result.total_uploads == 25 * 4
    assert result.total_bits == 25 * 4 * 32 * synthetic_problem.size


def test_sgd_equals_plain_minibatch_descent(synthetic_problem: Problem) -> None:
    result = run_in_process(AlgorithmConfig(algorithm="sgd", lr=0.05, batch_size=64), synthetic_problem, 15)
    expected = plain_descent(synthetic_problem, 0.05, 15, batch_size=64)
    np.testing.assert_allclose(result.theta, expected, rtol=1e-5, atol=1e-6)


def test_mlp_gd_equals_plain_gradient_descent() -> None:
    problem = build_problem(ProblemConfig(dataset="synthetic", model="mlp", num_workers=2))
    result = run_in_process(AlgorithmConfig(algorithm="gd", lr=0.05), problem, 5)
    np.testing.assert_allclose(result.theta, plain_descent(problem, 0.05, 5), rtol=1e-4, atol=1e-6)


def test_laq_without_quantization_or_skipping_is_gd(synthetic_problem: Problem) -> None:
    gd = run_in_process(AlgorithmConfig(algorithm="gd"), synthetic_problem, 20)
    laq = run_in_process(AlgorithmConfig(algorithm="laq", bits=32, xi=(0.0,) * 10), synthetic_problem, 20)
    np.testing.assert_array_equal(laq.theta, gd.theta)
    np.testing.assert_array_equal(laq.column("train_loss"), gd.column("train_loss"))


def test_switches_change_the_run(synthetic_problem: Problem) -> None:
    # The equivalence above must not be vacuous: with b = 4 or xi > 0 the iterates differ from GD.
    gd = run_in_process(AlgorithmConfig(algorithm="gd"), synthetic_problem, 20)
    qgd = run_in_process(AlgorithmConfig(algorithm="qgd", bits=4), synthetic_problem, 20)
    lag = run_in_process(AlgorithmConfig(algorithm="lag"), synthetic_problem, 20)
    assert not np.array_equal(qgd.theta, gd.theta)
    assert lag.total_uploads < gd.total_uploads


@pytest.mark.parametrize("vectors", ["numpy", "torch"])
@pytest.mark.parametrize("downlink_bits", [32, 4])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_aggregate_is_sum_of_copies_every_iteration(request: pytest.FixtureRequest, algorithm: str, downlink_bits: int,
                                                    vectors: str) -> None:
    synthetic_problem = request.getfixturevalue("synthetic_problem" if vectors == "numpy" else "synthetic_tensor_problem")
    checked = []
    final_versions: dict[int, int] = {}
    current = []

    def check(k: int, server: ServerState, workers: list[WorkerState]) -> None:
        assert isinstance(server.aggregate, torch.Tensor) == (vectors == "torch")
        copies = np.sum([to_numpy(server.copies[m]).astype(np.float64) for m in range(len(workers))], axis=0)
        np.testing.assert_allclose(to_numpy(server.aggregate), copies, rtol=1e-12, atol=1e-12)
        for m, worker in enumerate(workers):
            # Server and worker hold the very same Q_m(theta_hat_m), bit for bit, and count the same uploads.
            assert_same_bits(to_numpy(server.copies[m]), to_numpy(worker.copy))
            assert server.record(m).version == worker.version
            if server.downlink is None:
                assert worker.theta_tilde is None
                assert worker.checksum() == server.checksum(m)
            else:  # the server knows which theta_tilde each worker holds: version k if m was contacted in round k
                assert server.record(m).theta_version == worker.theta_version <= k < server.downlink.version
                if worker.theta_version == k:
                    current.append(m)
        final_versions.update({m: record.version for m, record in server.workers.items()})
        checked.append(k)

    # t_bar = 5 makes lazy workers re-upload, so the invariant is checked on copies that moved, not only on round 0's.
    smoothness = 0.5 if ALGORITHMS[algorithm].rule == "ps" else 0.0  # the estimate skips nothing in 40 noisy steps
    config = AlgorithmConfig(algorithm=algorithm, bits=3, lr=0.02, batch_size=100, t_bar=5, density=0.2,
                             downlink_bits=downlink_bits, smoothness=smoothness)
    result = run_in_process(config, synthetic_problem, 40, on_iteration=check)
    assert checked == list(range(40))
    assert all(version >= 3 for version in final_versions.values())  # every worker re-uploaded after round 0
    if config.spec.lazy:
        assert result.total_uploads < 40 * 4  # some skips, so the invariant was tested on stale copies
    if downlink_bits < 32:
        assert len(current) >= 20  # theta_tilde versions were compared on contact
        assert result.total_downlink_bits < 40 * 4 * 32 * synthetic_problem.size / 4


def test_two_way_workers_hold_the_servers_theta_tilde(synthetic_problem: Problem) -> None:
    """After every round, each contacted worker's theta_tilde (and Q_hat) checksum equals the server's."""
    agreed = []

    def check(k: int, server: ServerState, workers: list[WorkerState]) -> None:
        before_step = server.downlink.version - 1
        for m, worker in enumerate(workers):
            assert worker.theta_version == before_step
            # The server moved on by one innovation; replay it on the worker's copy to compare like with like.
            replica = copy.deepcopy(worker)
            assert_same_bits(replica.receive(server.broadcast(m), server.downlink.compressor), server.downlink.theta_tilde)
            assert replica.checksum() == server.checksum(m)
            agreed.append(m)

    config = AlgorithmConfig(algorithm="laq", bits=4, lr=0.02, downlink_bits=4)
    run_in_process(config, synthetic_problem, 15, on_iteration=check)
    assert len(agreed) == 15 * 4


def test_minibatch_runs_are_reproducible(synthetic_problem: Problem) -> None:
    config = AlgorithmConfig(algorithm="slaq", bits=3, batch_size=50)
    first = run_in_process(config, synthetic_problem, 10)
    second = run_in_process(config, synthetic_problem, 10)
    np.testing.assert_array_equal(first.theta, second.theta)
    assert first.column("uploads").tolist() == second.column("uploads").tolist()


def test_laq_on_mnist_uploads_less_than_gd_and_descends(mnist_dir: str) -> None:
    problem = build_problem(ProblemConfig(data_dir=mnist_dir))
    iterations = 60
    gd = run_in_process(AlgorithmConfig(algorithm="gd"), problem, iterations)
    laq = run_in_process(AlgorithmConfig(algorithm="laq", bits=4), problem, iterations)
    assert laq.total_uploads < gd.total_uploads
    assert laq.total_bits < gd.total_bits / 20
    loss = laq.column("train_loss")
    assert loss[-1] < 0.9 * loss[0]
    assert loss[-1] < loss[iterations // 2] < loss[0]
    assert laq.records[-1].test_accuracy > 0.8


def test_stop_when_ends_the_run_at_the_first_match(synthetic_problem: Problem) -> None:
    full = run_in_process(AlgorithmConfig(algorithm="gd"), synthetic_problem, 30)
    target = full.records[12].train_loss
    stopped = run_in_process(AlgorithmConfig(algorithm="gd"), synthetic_problem, 30, stop_when=lambda r: r.train_loss <= target)
    assert len(stopped.records) == 13
    np.testing.assert_array_equal(stopped.column("train_loss"), full.column("train_loss")[:13])


@pytest.mark.parametrize("vectors", ["numpy", "torch"])
def test_server_state_round_trips_through_arrays(request: pytest.FixtureRequest, vectors: str) -> None:
    synthetic_problem = request.getfixturevalue("synthetic_problem" if vectors == "numpy" else "synthetic_tensor_problem")
    config = AlgorithmConfig(algorithm="laq", bits=3, t_bar=4)
    saved = {}

    def snapshot(k: int, server: ServerState, workers: list[WorkerState]) -> None:
        if k == 9:
            server.lost(2)  # a lost reply, so the flag is stored too
            saved["server"] = {key: np.array(value, copy=True) for key, value in server.to_arrays().items()}
            saved["workers"] = [{key: np.array(v, copy=True) for key, v in w.to_arrays().items()} for w in workers]

    run_in_process(config, synthetic_problem, 10, on_iteration=snapshot)
    back = ServerState.from_arrays(saved["server"], config, 4, device=synthetic_problem.vector_device)
    assert isinstance(back.aggregate, torch.Tensor) == (vectors == "torch")
    again = back.to_arrays()
    assert saved["server"].keys() == again.keys()
    for key, value in saved["server"].items():
        assert_same_bits(again[key], value)
    assert [m for m, record in back.workers.items() if record.sync is Sync.RESET] == [2] and back.instruction(2).reset
    assert [back.record(m).version for m in range(4)] == [int(v["version"]) for v in saved["workers"]]


@pytest.mark.parametrize("device", [None, torch.device("cpu")])
def test_a_diverged_step_is_refused_and_changes_nothing(synthetic_problem: Problem, device: torch.device | None) -> None:
    server = ServerState(synthetic_problem.initial_theta, AlgorithmConfig(algorithm="gd", lr=1e30, downlink_bits=4), 4,
                         device)
    server.aggregate[:] = 1e10  # alpha * nabla overflows float32
    before = server.to_arrays()
    with pytest.raises(NonFiniteError, match="diverged"):
        server.step()
    for key, value in server.to_arrays().items():
        assert_same_bits(value, before[key])
