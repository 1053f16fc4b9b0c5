"""Two-way broadcasts and server-side skips through the in-process Grid, with messages lost both ways."""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Iterable
from uuid import uuid4

import numpy as np
import pytest
from conftest import assert_same_bits
from flwr.app import ArrayRecord, Message, MessageType

from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.flower import InProcessGrid, LaqStrategy, run_rounds
from laq_fl.flower.client import handle_train, load_state
from laq_fl.models import FlatModel
from laq_fl.problem import build_problem
from laq_fl.protocol import Sync

RUN_CONFIG = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused"}


class FaultyGrid(InProcessGrid):
    """Drops each broadcast and each reply with probability ``drop`` (seeded) in rounds up to ``faulty_rounds``,
    empties one node's ``context.state`` before round ``restart_round`` (a restart under the same id), and records
    which nodes received a message in each round."""

    def __init__(self, *, drop: float = 0.0, faulty_rounds: int = 0, restart_round: int | None = None, seed: int = 0) -> None:
        super().__init__(handle_train, 3, RUN_CONFIG)
        self.random = random.Random(seed)
        self.drop, self.faulty_rounds, self.restart_round = drop, faulty_rounds, restart_round
        self.received: dict[int, list[int]] = {}
        self.innovations: dict[int, list[int]] = {}
        self.errors: dict[int, list[str]] = {}
        self.lost = Counter()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        message_ids = []
        deflated: dict[str, bytes] = {}
        for message in messages:
            if message.metadata.message_type == MessageType.QUERY:  # identification: not what this grid tests
                message_ids.extend(super().push_messages([message]))
                continue
            server_round = int(message.metadata.group_id)
            if server_round == self.restart_round:
                self.restart_round = None
                next(iter(self.contexts.values())).state.config_records.clear()
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message_ids.append(message.metadata.message_id)
            faulty = server_round <= self.faulty_rounds
            if faulty and self.random.random() < self.drop:
                self.lost["broadcast"] += 1
                continue
            self.received.setdefault(server_round, []).append(message.metadata.dst_node_id)
            instruction = message.content["instruction"]
            if "theta-innovations" in instruction and "theta" not in message.content:
                self.innovations.setdefault(server_round, []).append(len(instruction["theta-innovations"]))
            reply = self._deliver(message, deflated)
            if reply.has_error():
                self.errors.setdefault(server_round, []).append(reply.error.reason)
            if faulty and self.random.random() < self.drop:
                self.lost["reply"] += 1
                continue
            self._replies[message.metadata.message_id] = reply
        return message_ids


def theta0() -> ArrayRecord:
    return ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)])


def synthetic_loss(theta: np.ndarray) -> float:
    return build_problem(ProblemConfig(dataset="synthetic", num_workers=3, data_dir="/unused")).training_loss(theta)


@pytest.mark.parametrize("report_every", [1, 0])
def test_lost_messages_and_a_restart_end_with_equal_state_on_both_sides(task_identity, report_every: int) -> None:
    # lr = 0.01: the synthetic problem's loss descends smoothly (at 0.05 it oscillates, and any perturbation,
    # a fault or not, moves the 31st loss by more than 1e-3).
    config = AlgorithmConfig(algorithm="laq", bits=4, lr=0.01, downlink_bits=4, t_bar=10)
    clean = LaqStrategy(config, 3, report_every)
    run_rounds(clean, FaultyGrid(), theta0(), num_rounds=31)

    # 30 rounds with 10% of broadcasts and of replies lost and node 0 restarted, then one round without faults.
    grid = FaultyGrid(drop=0.1, faulty_rounds=30, restart_round=12, seed=3)
    strategy = LaqStrategy(config, 3, report_every)
    run_rounds(strategy, grid, theta0(), num_rounds=31)
    metrics = {r: stats.metrics() for r, stats in strategy.round_stats.items()}
    assert grid.lost["broadcast"] > 3 and grid.lost["reply"] > 3
    # The restarted node noticed it holds no state (its version is not the server's, or it has no base for the
    # innovations) and said so instead of computing: the server resynced it.
    assert metrics[12]["resyncs"] >= 1
    assert sum(metrics[r]["full-broadcasts"] for r in range(2, 32)) >= grid.lost["broadcast"] + grid.lost["reply"]

    state = strategy.state
    assert all(record.sync is Sync.IN_SYNC for record in state.workers.values())
    for context in grid.contexts.values():
        node = context.node_config["partition-id"]  # the server keeps worker state per partition
        worker = load_state(context, state.size, np.float32)
        assert_same_bits(state.copies[node], worker.copy)
        assert state.record(node).version == worker.version
        # The server stepped once more after the last round: replay that broadcast on a replica of the worker.
        replica = copy.deepcopy(worker)
        assert_same_bits(replica.receive(state.broadcast(node), state.downlink.compressor), state.downlink.theta_tilde)
        assert replica.checksum() == state.checksum(node)
    np.testing.assert_allclose(state.aggregate, sum(c.astype(np.float64) for c in state.copies.values()), atol=1e-12)
    assert abs(synthetic_loss(state.iterate) - synthetic_loss(clean.state.iterate)) < 1e-3


def test_a_worker_the_server_leaves_alone_receives_nothing_and_catches_up(task_identity) -> None:
    config = AlgorithmConfig(algorithm="laq-ps", bits=4, lr=0.05, downlink_bits=4, smoothness=3.0, t_bar=6)
    grid = FaultyGrid()
    strategy = LaqStrategy(config, 3, report_every=1)
    run_rounds(strategy, grid, theta0(), num_rounds=25)
    node_ids = list(grid.contexts)
    left_alone = 0
    for server_round, stats in strategy.round_stats.items():
        metrics = stats.metrics()
        received = grid.received.get(server_round, [])
        assert len(received) == 3 - metrics["not-contacted"]
        left_alone += metrics["not-contacted"]
        assert metrics["rejected"] == 0  # every worker that comes back applies exactly the innovations it missed
        if server_round > 1:
            assert metrics["full-broadcasts"] == 0  # never more than a few rounds behind: the chain is cheaper
    assert left_alone > 10
    assert max(count for counts in grid.innovations.values() for count in counts) > 1  # workers caught up by chains
    state = strategy.state
    for node_id in node_ids:
        node = grid.contexts[node_id].node_config["partition-id"]
        worker = load_state(grid.contexts[node_id], state.size, np.float32)
        assert state.record(node).theta_version == worker.theta_version  # the server knows what each worker holds
        replica = copy.deepcopy(worker)
        assert_same_bits(replica.receive(state.broadcast(node), state.downlink.compressor), state.downlink.theta_tilde)
        assert replica.checksum() == state.checksum(node)
