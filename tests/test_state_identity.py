"""Nothing lost: worker state belongs to a partition, is checked every contact, and comes back after restarts,
duplicates, vanished nodes and a resumed ServerApp (issue 11's failing inputs, each as a test)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict

from laq_fl.config import AlgorithmConfig, ConfigError
from laq_fl.flower.client import handle_train, load_state
from laq_fl.flower.grid import InProcessGrid
from laq_fl.flower.serverapp import run_server
from laq_fl.flower.serverapp import run_rounds
from laq_fl.flower.strategy import LaqStrategy, RunStopped
from laq_fl.models import FlatModel
from laq_fl.results import read_results
from laq_fl.run_config import parse_run_config

M = 3
RUN_CONFIG = {"dataset": "synthetic", "num-clients": M, "data-dir": "/unused"}


def theta0() -> ArrayRecord:
    return ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)])


class HidingGrid(InProcessGrid):
    """An in-process grid whose ``hidden`` nodes are not listed (gone, as far as the server can tell)."""

    def __init__(self, num_nodes: int = M, run_config: dict | None = None, **kwargs) -> None:
        super().__init__(handle_train, num_nodes, run_config or RUN_CONFIG, **kwargs)
        self.hidden: set[int] = set()

    def get_node_ids(self) -> list[int]:
        return [node for node in self.contexts if node not in self.hidden]


def run(config: AlgorithmConfig, grid: InProcessGrid, rounds: int, on_round_end=None) -> LaqStrategy:
    strategy = LaqStrategy(config, M)
    run_rounds(strategy, grid, theta0(), num_rounds=rounds, on_round_end=on_round_end)
    return strategy


def assert_in_sync(strategy: LaqStrategy, grid: InProcessGrid) -> None:
    """Every worker's Q_hat and version equal the server's copy of its partition; aggregate = sum of copies."""
    state = strategy.state
    for node, context in grid.contexts.items():
        if node not in strategy.membership.roster.serving.values():
            continue
        partition = context.node_config["partition-id"]
        worker = load_state(context, state.size, np.float32)
        assert np.max(np.abs(worker.copy - state.copies[partition])) == 0.0
        assert worker.version == state.record(partition).version
    np.testing.assert_allclose(state.aggregate, sum(c.astype(np.float64) for c in state.copies.values()), atol=1e-12)


LAQ = AlgorithmConfig(algorithm="laq", bits=4, lr=0.02, t_bar=2)


def test_a_node_restarted_under_its_id_with_an_empty_state_is_restored_within_the_round(task_identity) -> None:
    """Input 1: laq, 3 workers, t_bar = 2; after round 3 one node loses its context.state; 6 more rounds."""
    clean = run(LAQ, HidingGrid(), 9)
    grid = HidingGrid()
    restarted = next(iter(grid.contexts.values()))

    def lose_state(server_round: int) -> None:
        if server_round == 3:
            restarted.state = RecordDict()

    strategy = run(LAQ, grid, 9, lose_state)
    assert_in_sync(strategy, grid)
    assert sum(m.restores for m in strategy.round_stats.values()) == 1
    assert strategy.round_stats[4].restores == 1 and strategy.round_stats[4].rejected == 0
    # The worker got its state back before computing: the run is the undisturbed one, bit for bit.
    np.testing.assert_array_equal(strategy.state.theta, clean.state.theta)
    assert [m.uploads for m in strategy.round_stats.values()] == [m.uploads for m in clean.round_stats.values()]


@pytest.mark.parametrize("config", [
    AlgorithmConfig(algorithm="laq", bits=4, lr=0.02, t_bar=2, downlink_bits=4),
    AlgorithmConfig(algorithm="slaq-wk2", bits=4, lr=0.02, batch_size=100, t_bar=3),
], ids=["laq-two-way", "slaq-wk2"])
def test_a_restart_is_exact_for_two_way_and_same_sample_members(task_identity, config: AlgorithmConfig) -> None:
    run_config = {**RUN_CONFIG, "batch-size": 100}
    clean = run(config, HidingGrid(run_config=run_config), 8)
    grid = HidingGrid(run_config=run_config)
    restarted = list(grid.contexts.values())[1]
    strategy = run(config, grid, 8, lambda r: setattr(restarted, "state", RecordDict()) if r in (2, 5) else None)
    assert_in_sync(strategy, grid)
    np.testing.assert_array_equal(strategy.state.iterate, clean.state.iterate)


def test_two_nodes_claiming_one_partition_count_once(task_identity, caplog) -> None:
    """Input 2: four nodes with partition-ids 0, 1, 2, 0 for num-clients = 3."""
    clean = run(LAQ, HidingGrid(), 5)
    grid = HidingGrid(num_nodes=4)
    duplicate = list(grid.contexts)[3]
    for context in grid.contexts.values():
        context.node_config["num-partitions"] = M
    grid.contexts[duplicate].node_config["partition-id"] = 0
    strategy = run(LAQ, grid, 5)
    assert set(strategy.state.copies) == {0, 1, 2}
    assert strategy.round_stats[1].duplicates == 1
    assert f"node {duplicate} also claims partition 0" in caplog.text
    assert grid.contexts[duplicate].state.config_records == {}  # never contacted
    np.testing.assert_array_equal(strategy.state.theta, clean.state.theta)


def server_context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))


def test_more_nodes_than_num_clients_stops_before_round_one(tmp_path, task_identity) -> None:
    """Input 3: three nodes (num-partitions = 3, as a simulation sets it) for num-clients = 2."""
    run_config = {**RUN_CONFIG, "num-clients": 2, "out-dir": str(tmp_path), "run-name": "extra", "rounds": 3}
    grid = HidingGrid(num_nodes=3, run_config=run_config)
    trained = []
    grid.client_app = lambda message, context: trained.append(message) or handle_train(message, context)
    with pytest.raises(RunStopped, match=r"3 node\(s\) connected for num-clients=2.*num-partitions=3"):
        run_server(grid, server_context(run_config))
    assert trained == []  # no train message went out
    rows, status = read_results(tmp_path / "extra.jsonl")
    assert [row["round"] for row in rows] == [0] and status["status"] == "failed" and "num-clients=2" in status["error"]


@pytest.mark.parametrize("node_config", [{}, {"partition-id": 5, "num-partitions": M}], ids=["none", "partition-5"])
def test_a_node_that_does_not_fit_stops_the_run_with_its_error(task_identity, node_config: dict) -> None:
    """Input 6: a SuperNode without --node-config, or with partition-id 5 for 3 clients."""
    grid = HidingGrid(num_nodes=4)
    stranger = list(grid.contexts)[3]
    grid.contexts[stranger].node_config = node_config
    for context in list(grid.contexts.values())[:3]:
        context.node_config["num-partitions"] = M
    with pytest.raises(RunStopped, match=f"round 1: .*node {stranger}: .*(partition-id|outside 0..2)"):
        run(LAQ, grid, 3)


def test_a_partition_missing_for_good_stops_the_run(task_identity) -> None:
    grid = HidingGrid()
    gone = list(grid.contexts)[2]
    strategy = LaqStrategy(LAQ, M, node_wait_timeout=0.0)

    def vanish(server_round: int) -> None:
        if server_round == 2:
            grid.hidden.add(gone)

    with pytest.raises(RunStopped, match=r"partition\(s\) \[2\] for 3 rounds"):
        run_rounds(strategy, grid, theta0(), num_rounds=10, on_round_end=vanish)
    assert max(strategy.round_stats) == 4  # rounds 3 and 4 ran on the stale copy of partition 2


def test_a_node_that_vanishes_and_returns_under_its_id_is_in_sync(task_identity) -> None:
    """Input 5: hide one node in rounds 5-6 of a laq run; its copy and the server's must agree afterwards."""
    grid = HidingGrid()
    node = list(grid.contexts)[1]
    strategy = run(LAQ, grid, 10, lambda r: grid.hidden.clear() if r == 6 else grid.hidden.add(node) if r == 4 else None)
    assert [strategy.round_stats[r].not_contacted for r in (5, 6)] == [1, 1]
    assert strategy.round_stats[7].resyncs == 0  # it kept its state and the server its copy: nothing to fix
    assert_in_sync(strategy, grid)


def test_divergence_stops_the_run_naming_the_cause(tmp_path, task_identity) -> None:
    """Input 4. The issue's lr = 1000 (with the default lambda = 0.01) is now refused before round 1 (lr * lambda
    >= 2, below); the logistic loss alone has bounded gradients, so overflowing it takes lr = 1e38."""
    run_config = {**RUN_CONFIG, "algorithm": "gd", "lr": 1e38, "lambda": 0.0, "rounds": 60, "out-dir": str(tmp_path), "run-name": "diverged"}
    with pytest.raises(RunStopped, match=r"round \d+: .*(not finite|NonFiniteError|overflows)") as stopped:
        run_server(HidingGrid(run_config=run_config), server_context(run_config))
    rows, status = read_results(tmp_path / "diverged.jsonl")
    assert status["status"] == "failed" and status["error"].endswith(str(stopped.value))
    assert status["rounds"] == rows[-1]["round"] < 60


@pytest.mark.parametrize("key, value, match", [
    ("lambda", 1e308, "lr \\* lambda"),
    ("lambda", 0.01, "lr \\* lambda \\* num-clients = 100 >= 2"),  # with lr = 1000 below and M = 10
    ("seed", 1e21, "2\\^63"),
    ("round-timeout", float("inf"), "finite"),
    ("checkpoint-every", -1, ">= 0"),
    ("resume", True, "run-name"),
])
def test_absurd_values_are_refused_before_round_one(key: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as refused:
        parse_run_config({key: value, "lr": 1000.0} if value == 0.01 else {key: value})
    assert refused.value.key == key



def test_the_regulariser_bound_counts_every_client() -> None:
    # The step sums M gradients, each with lambda theta: lr = 1, lambda = 0.5 diverges (x16 per round) with 10 clients,
    # not with one.
    with pytest.raises(ConfigError, match="num-clients = 10"):
        parse_run_config({"lr": 1.0, "lambda": 0.5, "num-clients": 10})
    assert parse_run_config({"lr": 1.0, "lambda": 0.5, "num-clients": 1}).problem.lam == 0.5

def test_train_loss_says_how_many_losses_are_missing(task_identity) -> None:
    """Input 8: the mean covers the accepted replies; loss-missing counts the contacted workers it leaves out."""
    grid = HidingGrid()
    silent = list(grid.contexts)[0]

    def drop_one(message: Message, context: Context) -> Message:
        if context.node_id == silent and message.content["instruction"]["iteration"] == 1:
            raise ConnectionError("reply lost")
        return handle_train(message, context)

    grid.client_app = drop_one
    strategy = LaqStrategy(LAQ, M, report_every=1)
    run_rounds(strategy, grid, theta0(), num_rounds=3)
    metrics = {r: stats.metrics() for r, stats in strategy.round_stats.items()}
    assert (metrics[2]["loss-reports"], metrics[2]["loss-missing"]) == (2, 1)
    assert (metrics[3]["loss-reports"], metrics[3]["loss-missing"]) == (3, 0)


def test_before_round_one_the_server_waits_for_a_late_node(task_identity) -> None:
    grid = HidingGrid()
    late = list(grid.contexts)[2]
    grid.hidden.add(late)
    timer = threading.Timer(0.7, grid.hidden.clear)
    timer.start()
    strategy = LaqStrategy(LAQ, M, node_wait_timeout=10.0)
    run_rounds(strategy, grid, theta0(), num_rounds=2)
    timer.join()
    assert strategy.round_stats[1].uploads == M and strategy.round_stats[1].identified == M


def test_mid_run_a_partition_may_go_unserved_for_node_wait_timeout(task_identity) -> None:
    """A SuperNode restarted under its authenticated id reconnects only after the SuperLink dropped the old
    connection (~60 s): the run goes on with the stale copy meanwhile, for up to node-wait-timeout."""
    grid = HidingGrid()
    gone = list(grid.contexts)[1]
    strategy = LaqStrategy(LAQ, M, node_wait_timeout=3600.0)
    run_rounds(strategy, grid, theta0(), num_rounds=9, on_round_end=lambda r: grid.hidden.add(gone) if r == 2 else
                   grid.hidden.clear() if r == 7 else None)
    assert [strategy.round_stats[r].unserved for r in range(3, 9)] == [1, 1, 1, 1, 1, 0]
    assert_in_sync(strategy, grid)


def test_a_fractional_partition_id_is_a_node_config_error(task_identity) -> None:
    grid = HidingGrid()
    node = list(grid.contexts)[1]
    grid.contexts[node].node_config["partition-id"] = 1.7
    with pytest.raises(RunStopped, match=f"node {node}: .*must be integers"):
        run(LAQ, grid, 2)


@pytest.mark.parametrize("damage", ["truncated", "layout", "twice-the-size", "nan-error", "nan-copy"])
def test_a_node_state_that_cannot_be_read_back_is_restored_not_fatal(task_identity, caplog, damage: str) -> None:
    """A node's context.state damaged after round 3 (bytes cut short, an unreadable layout, a Q_hat of another size,
    a non-finite scalar): the worker treats it as lost, says its state differs, and the server restores it within the
    round; the run is the undisturbed one, bit for bit."""
    clean = run(LAQ, HidingGrid(), 9)
    grid = HidingGrid()
    context = list(grid.contexts.values())[1]

    def damage_state(server_round: int) -> None:
        if server_round == 3:
            record = context.state.config_records["laq-worker"]
            if damage == "truncated":
                record["copy"] = record["copy"][:-3]
            elif damage == "layout":
                record["layout"] = "{not json"
            elif damage == "twice-the-size":
                record["copy"] = record["copy"] * 2
            elif damage == "nan-error":
                record["last-error-sq"] = np.float64(np.nan).tobytes()
            else:
                copy = np.frombuffer(record["copy"], "<f4").copy()
                copy[3] = np.nan
                record["copy"] = copy.tobytes()

    strategy = run(LAQ, grid, 9, damage_state)
    assert strategy.round_stats[4].restores == 1 and strategy.round_stats[4].rejected == 0
    assert "treated as lost" in caplog.text
    assert_in_sync(strategy, grid)
    np.testing.assert_array_equal(strategy.state.theta, clean.state.theta)
