"""The real ServerApp, strategy and ClientApp through the in-process Grid."""

from __future__ import annotations

import tomllib  # Python >= 3.11
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, assert_same_bits
from flwr.app import ArrayRecord, Context, Message, RecordDict

from client_app import app as client_app
from laq_fl.config import ALGORITHMS, AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.flower import InProcessGrid, LaqStrategy, run_rounds, run_server
from laq_fl.flower.client import handle_train, load_state
from laq_fl.models import FlatModel
from laq_fl.protocol import Sync
from laq_fl.results import read_results
from laq_fl.run_config import RUN_CONFIG_SCHEMA


def run_app(run_config: dict, num_nodes: int, handler=client_app) -> tuple[np.ndarray, list[dict], InProcessGrid]:
    grid = InProcessGrid(handler, num_nodes, run_config)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))
    result = run_server(grid, context)
    (theta,) = result.arrays.to_numpy_ndarrays()
    path = Path(run_config["out-dir"]) / f"{run_config['run-name']}.jsonl"
    rows, status = read_results(path)
    assert status is not None and status["status"] == "completed"
    return theta, rows, grid


MINIBATCH = {"bits": 3, "lr": 0.008, "batch-size": 500}
SETTINGS = {"ssgd": {**MINIBATCH, "density": 0.3}, "dgc": {**MINIBATCH, "density": 0.01}, "qgd": {"bits": 8}}


TWO_WAY = [("laq", 4), ("gd", 8), ("slaq-wk2", 4), ("laq-ps", 4), ("lasg-ps", 8)]


@pytest.mark.parametrize(("algorithm", "downlink_bits"), [(name, 32) for name in ALGORITHMS] + TWO_WAY)
def test_flower_app_matches_in_process_driver(mnist_dir: str, tmp_path, algorithm: str, downlink_bits: int) -> None:
    rounds = 30
    extra = SETTINGS.get(algorithm, MINIBATCH if ALGORITHMS[algorithm].minibatch else {})
    run_config = {
        "algorithm": algorithm, "rounds": rounds, "data-dir": mnist_dir, "out-dir": str(tmp_path), "run-name": algorithm,
        "report-every": 1, "downlink-bits": downlink_bits, **extra,
    }
    theta, rows, _ = run_app(run_config, 10)

    algorithm_config = AlgorithmConfig(
        algorithm=algorithm, bits=extra.get("bits", 4), lr=extra.get("lr", 0.02), batch_size=extra.get("batch-size", 500),
        density=extra.get("density", 0.5), downlink_bits=downlink_bits,
    )
    expected = run_in_process(algorithm_config, ProblemConfig(data_dir=mnist_dir), rounds)
    assert_same_bits(theta, expected.theta)
    trained = rows[1:]
    assert [row["round"] for row in rows] == list(range(rounds + 1))
    assert [row["uploads"] for row in trained] == expected.column("uploads").tolist()
    assert [row["payload-bits"] for row in trained] == expected.column("payload_bits").tolist()
    assert [row["downlink-payload-bits"] for row in trained] == expected.column("downlink_bits").tolist()
    assert [row["full-broadcasts"] for row in trained] == expected.column("full_broadcasts").tolist()
    assert [row["loss-reports"] for row in trained] == expected.column("contacted").tolist()
    losses = [np.nan if row["train-loss"] is None else row["train-loss"] for row in trained]  # NaN: nobody contacted
    np.testing.assert_allclose(losses, expected.column("minibatch_loss"), rtol=1e-12)
    np.testing.assert_allclose([row["test-accuracy"] for row in trained], expected.column("test_accuracy"))
    if downlink_bits < 32:  # the innovation of the iterate costs b bits a coordinate, theta 32
        assert expected.total_downlink_bits < 0.5 * 32 * expected.problem.num_workers * rounds * theta.size
        assert rows[1]["full-broadcasts"] == 10 and sum(row["full-broadcasts"] for row in trained) == 10
    if algorithm_config.spec.rule == "ps":
        assert sum(row["not-contacted"] for row in trained) > 0
    if algorithm_config.spec.lazy:
        assert 0 < expected.total_uploads < 10 * rounds  # some rounds were skipped
    else:
        assert expected.total_uploads == 10 * rounds
    assert all(row["uplink-bytes"] * 8 > row["payload-bits"] for row in trained if row["uploads"] + row["skips"])
    assert rows[-1]["uploads-cum"] == expected.total_uploads
    if algorithm != "slaq":  # SLAQ with rule (7a) as printed does not learn on minibatches (README, Table 3)
        assert expected.records[-1].test_accuracy > 0.6


def test_lost_replies_resync_and_the_run_goes_on(task_identity) -> None:
    """A node fails in rounds 3 and 4; the server reuses its stale copy, then resyncs it."""
    failures = []

    def flaky(message: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1 and message.content["instruction"]["iteration"] in (2, 3):
            # Fail after the worker moved its memory: the worst case for keeping the copies in sync.
            handle_train(message, context)
            failures.append(message.content["instruction"]["iteration"])
            raise ConnectionError("uplink dropped")
        return handle_train(message, context)

    run_config = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused"}
    grid = InProcessGrid(flaky, 3, run_config)
    theta0 = FlatModel.named("logistic").initial_parameters("glorot", 0)
    strategy = LaqStrategy(AlgorithmConfig(algorithm="laq", bits=4), 3)
    run_rounds(strategy, grid, ArrayRecord([theta0]), num_rounds=8)

    assert failures == [2, 3]
    assert [strategy.round_stats[r].rejected for r in range(1, 9)] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert [strategy.round_stats[r].resyncs for r in range(1, 9)] == [0, 0, 1, 1, 0, 0, 0, 0]
    state = strategy.state
    assert all(record.sync is Sync.IN_SYNC for record in state.workers.values())
    for context in grid.contexts.values():
        node = context.node_config["partition-id"]  # the server keeps worker state per partition
        worker = load_state(context, state.size, np.float32)
        np.testing.assert_array_equal(state.copies[node], worker.copy)
        assert state.record(node).version == worker.version
    np.testing.assert_allclose(state.aggregate, sum(c.astype(np.float64) for c in state.copies.values()), atol=1e-12)
    losses = [strategy.round_stats[r].train_loss for r in range(1, 9)]
    assert losses[-1] < losses[0]


BAD_VALUES = [
    ("bits", 0), ("bits", 17), ("bits", 31), ("lr", 0.0), ("lr", -1.0), ("xi-sum", -0.1), ("D", 0), ("t-bar", 0),
    ("algorithm", "adam"), ("model", "resnet"), ("partition", "shards"), ("task", "mnist-resnet"), ("device", "gpu"), ("num-clients", 0), ("rounds", 0),
    ("dtype", "float16"), ("lambda", -1.0), ("batch-size", 0), ("data-dir", "relative/path"), ("bits", "four"),
    ("no-such-key", 1), ("xi-warmup", "yes"), ("xi-warmup", 1), ("density", 0.0), ("density", 1.5), ("bits", 1.5),
    ("algorithm", "LAQ"), ("density", float("nan")), ("lr", float("inf")), ("downlink-bits", 0), ("downlink-bits", 1), ("downlink-bits", 17),
    ("downlink-bits", 24), ("smoothness", -1.0), ("smoothness", float("inf")), ("report-every", -1), ("report-every", 0.5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_invalid_run_config_stops_before_round_one(tmp_path, task_identity, key: str, value: object) -> None:
    delivered = []

    def recording(message: Message, context: Context) -> Message:
        delivered.append(message)
        return handle_train(message, context)

    run_config = {"dataset": "synthetic", "num-clients": 2, "rounds": 2, "out-dir": str(tmp_path), "run-name": "bad"}
    run_config[key] = value
    grid = InProcessGrid(recording, 2, run_config)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)
    with pytest.raises(ConfigError) as info:
        run_server(grid, context)
    assert info.value.key == key and key in str(info.value)
    assert delivered == [] and not (tmp_path / "bad.jsonl").exists()


def test_pyproject_run_config_matches_the_schema() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == {key: default for key, (_, default) in RUN_CONFIG_SCHEMA.items()}


def test_a_run_where_every_reply_fails_stops_with_the_reason(tmp_path, task_identity) -> None:
    def broken(message: Message, context: Context) -> Message:
        raise FileNotFoundError("MNIST not found under /nowhere")

    run_config = {"dataset": "synthetic", "num-clients": 2, "rounds": 10, "out-dir": str(tmp_path), "run-name": "broken"}
    grid = InProcessGrid(broken, 2, run_config)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)
    with pytest.raises(RuntimeError, match="3 consecutive rounds.*MNIST not found"):
        run_server(grid, context)
    rows, status = read_results(tmp_path / "broken.jsonl")
    assert len(rows) == 3  # theta^0 and the two rounds before the third failure; nothing after
    assert status["status"] == "failed" and status["rounds"] == 2 and "MNIST not found" in status["error"]


def test_a_big_endian_theta0_is_broadcast_in_native_order(task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 2, "data-dir": "/unused"}
    theta0 = FlatModel.named("logistic").initial_parameters("glorot", 0)
    results = []
    for start in (theta0, theta0.astype(">f4")):
        strategy = LaqStrategy(AlgorithmConfig(algorithm="dgc", density=np.float64(0.1)), 2)
        run_rounds(strategy, InProcessGrid(handle_train, 2, run_config), ArrayRecord([start]), num_rounds=3)
        assert sum(strategy.round_stats[r].rejected for r in (1, 2, 3)) == 0
        results.append(strategy.state.theta)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_copies_agree_bit_for_bit_after_30_rounds_through_the_grid(task_identity, algorithm: str) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused", "batch-size": 100}
    config = AlgorithmConfig(algorithm=algorithm, bits=3, lr=0.05, batch_size=100, t_bar=4, density=0.2)
    grid = InProcessGrid(handle_train, 3, run_config)
    strategy = LaqStrategy(config, 3)
    run_rounds(strategy, grid, ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)]), num_rounds=30)
    state = strategy.state
    assert sum(strategy.round_stats[r].rejected for r in range(1, 31)) == 0
    for context in grid.contexts.values():
        node = context.node_config["partition-id"]  # the server keeps worker state per partition
        worker = load_state(context, state.size, np.float32)
        assert_same_bits(state.copies[node], worker.copy)
        assert state.record(node).version == worker.version >= 3  # re-uploaded after round 1 (t_bar = 4 forces it)
    copies = sum(copy.astype(np.float64) for copy in state.copies.values())
    np.testing.assert_allclose(state.aggregate, copies, rtol=1e-12, atol=1e-12)


def test_results_say_how_each_rounds_loss_is_formed(tmp_path, task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 3, "rounds": 7, "report-every": 3, "data-dir": "/unused",
                  "out-dir": str(tmp_path), "run-name": "reports", "lr": 0.01}
    _, rows, _ = run_app(run_config, 3, handler=handle_train)
    trained = rows[1:]
    assert [row["train-loss-of"] for row in trained] == ["contacted", "uploads", "uploads", "contacted", "uploads", "uploads",
                                                         "contacted"]
    for row in trained:
        expected = 3 if row["train-loss-of"] == "contacted" else row["uploads"]
        assert row["loss-reports"] == expected
        assert row["total-bytes"] == row["uplink-bytes"] + row["downlink-bytes"]
    assert rows[0]["train-loss-of"] == "none"


@pytest.mark.parametrize("algorithm", ["laq", "slaq-wk2", "laq-ps"])
def test_flowers_own_start_loop_runs_the_strategy_as_the_serverapp_loop_does(task_identity, algorithm: str) -> None:
    """The strategy implements only Flower's hooks: Flower's Strategy.start drives it to the same iterate, bit for bit,
    as the ServerApp's loop (run_rounds), with no fault for the follow-up to mend."""
    run_config = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused", "batch-size": 100}
    config = AlgorithmConfig(algorithm=algorithm, bits=4, lr=0.05, batch_size=100, t_bar=3)
    theta0 = ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)])
    ours = LaqStrategy(config, 3, report_every=2)
    run_rounds(ours, InProcessGrid(client_app, 3, run_config), theta0, 8)
    flowers = LaqStrategy(config, 3, report_every=2, num_rounds=8)
    result = flowers.start(InProcessGrid(client_app, 3, run_config), theta0, num_rounds=8)
    assert_same_bits(result.arrays.to_numpy_ndarrays()[0], ours.state.iterate)
    counts = ("uploads", "skips", "rejected", "not_contacted", "payload_bits", "downlink_payload_bits", "loss_reports")
    assert [[getattr(s, key) for key in counts] for s in flowers.round_stats.values()] == \
        [[getattr(s, key) for key in counts] for s in ours.round_stats.values()]


def test_a_strategy_config_that_is_not_laqs_is_refused() -> None:
    from flwr.serverapp.strategy import FedAvg

    with pytest.raises(TypeError, match="needs a laq_fl.config.AlgorithmConfig, got FedAvg"):
        LaqStrategy(FedAvg(), 3)
