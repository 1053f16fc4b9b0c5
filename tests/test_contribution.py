"""No run that silently trains on part of the data: issue 19's four failures, each for its whole kind, through the real
ClientApp and the in-process Grid (real message serialisation).

1. a node that answers for another partition than the server knew is identified again, not refused to the end;
2. a partition whose worker never contributes (always failing, late, refused) stops the run naming it, its node and
   its last error -- mid-run after the grace, or at the end -- and the run never reports ``completed``;
3. nodes that cannot identify are asked a bounded number of times, with back-off, and never hold up a round;
4. a ClientApp that cannot answer the query makes the stop message name those nodes and their error.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from client_app import app as client_app
from laq_fl.config import AlgorithmConfig
from laq_fl.errors import RunStopped
from laq_fl.flower import InProcessGrid, LaqStrategy, run_rounds, run_server
from laq_fl.flower.client import handle_train, load_state
from laq_fl.models import FlatModel
from laq_fl.protocol import GRACE_ROUNDS, MAX_QUERY_ATTEMPTS, Sync
from laq_fl.results import read_results

M = 3
RUN_CONFIG = {"dataset": "synthetic", "num-clients": M, "data-dir": "/unused"}
LAQ = AlgorithmConfig(algorithm="laq", bits=4, lr=0.02, t_bar=3)


def theta0() -> ArrayRecord:
    return ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)])


def serve(run_config: dict, grid: InProcessGrid):
    return run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))


def assert_every_serving_node_in_sync(strategy: LaqStrategy, grid: InProcessGrid) -> None:
    state = strategy.state
    for partition, node in strategy.membership.roster.serving.items():
        worker = load_state(grid.contexts[node], state.size, np.float32)
        assert grid.contexts[node].node_config["partition-id"] == partition
        assert worker.version == state.record(partition).version
        np.testing.assert_array_equal(worker.copy, state.copies[partition])
    np.testing.assert_allclose(state.aggregate, sum(c.astype(np.float64) for c in state.copies.values()), atol=1e-12)


class CountingGrid(InProcessGrid):
    """Counts the queries each node receives; refuses to carry a query through ``send_and_receive`` (which would
    wait up to the round-timeout for its answer)."""

    def __init__(self, client_app, num_nodes: int, run_config: dict, **kwargs) -> None:
        super().__init__(client_app, num_nodes, run_config, **kwargs)
        self.queries: Counter = Counter()

    def push_messages(self, messages):
        messages = list(messages)
        self.queries.update(m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.QUERY)
        return super().push_messages(messages)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        assert all(m.metadata.message_type != MessageType.QUERY for m in messages), "a query held up a round"
        return super().send_and_receive(messages, timeout=timeout)


# -- 1. a node that answers for another partition ------------------------------------------------------------------


@pytest.mark.parametrize("swapped", [(0, 1), (0, 1, 2)], ids=["two", "three-cycle"])
def test_nodes_restarted_with_other_partition_ids_are_identified_again(task_identity, swapped) -> None:
    """laq, 3 nodes, report-every 1, 25 rounds; after round 3 some nodes restart under the same ids with their
    partition-ids permuted and an empty state: every partition goes on contributing, each served by its new node."""
    grid = CountingGrid(client_app, M, RUN_CONFIG)
    nodes = list(grid.contexts)

    def restart_permuted(server_round: int) -> None:
        if server_round == 3:
            partitions = [grid.contexts[nodes[i]].node_config["partition-id"] for i in swapped]
            for i, partition in zip(swapped, partitions[1:] + partitions[:1]):
                grid.contexts[nodes[i]].node_config["partition-id"] = partition
                grid.contexts[nodes[i]].state = RecordDict()

    strategy = LaqStrategy(LAQ, M, report_every=1)
    run_rounds(strategy, grid, theta0(), 25, on_round_end=restart_permuted)
    stats = strategy.round_stats
    assert stats[4].rejected == len(swapped)  # each answered for another partition once...
    assert sum(stats[r].rejected for r in range(5, 26)) == 0  # ...then was identified again
    assert all(grid.queries[nodes[i]] == 2 for i in swapped)
    assert all(stats[r].loss_reports == M for r in range(5, 26))  # every partition's worker reports every round
    assert all(strategy.state.record(p).version > 2 for p in range(M))
    assert {p: grid.contexts[n].node_config["partition-id"] for p, n in strategy.membership.roster.serving.items()} == \
        {p: p for p in range(M)}
    assert_every_serving_node_in_sync(strategy, grid)


# -- 2. a partition that never contributes -------------------------------------------------------------------------


def failing_on(partition: int, error: Exception, rounds: range | None = None):
    def handler(message: Message, context: Context) -> Message:
        iteration = message.content["instruction"]["iteration"]
        if context.node_config["partition-id"] == partition and (rounds is None or iteration + 1 in rounds):
            raise error
        return handle_train(message, context)

    return handler


def test_a_partition_whose_worker_always_fails_ends_the_run_failed_naming_it(tmp_path, task_identity) -> None:
    """The ClientApp of partition 0 raises on every train message for 30 rounds (node-wait-timeout at its default,
    120 s, is longer than the run): the run does not report completed; it fails naming the partition, the node and
    the error."""
    run_config = {**RUN_CONFIG, "rounds": 30, "out-dir": str(tmp_path), "run-name": "silent"}
    grid = InProcessGrid(failing_on(0, FileNotFoundError("/data/part-0.npz")), M, run_config)
    node = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == 0)
    with pytest.raises(RunStopped, match=rf"round 30: .*partition\(s\) \[0\].*partition 0 \(node {node}\): 30 round"
                                         r"\(s\), last: error reply: .*FileNotFoundError.*part-0\.npz"):
        serve(run_config, grid)
    rows, status = read_results(tmp_path / "silent.jsonl")
    assert status["status"] == "failed" and "FileNotFoundError" in status["error"]
    assert [row["rejected"] for row in rows[1:]] == [1] * 30  # every round's row, the last one included


class FaultyNodeGrid(InProcessGrid):
    """Node ``node`` misbehaves from round 2 on: its ClientApp raises (``error``), its replies carry a checksum that
    is never the server's (``refused``), its replies never come (``late``), or it is no longer listed
    (``unserved``)."""

    def __init__(self, fault: str) -> None:
        super().__init__(self._handle, M, RUN_CONFIG)
        self.fault = fault
        self.node = next(n for n, c in self.contexts.items() if c.node_config["partition-id"] == 1)
        self.rounds_done = 0

    def _handle(self, message: Message, context: Context) -> Message:
        faulty = context.node_id == self.node and message.content["instruction"]["iteration"] >= 1
        if faulty and self.fault == "error":
            raise RuntimeError("disk full")
        reply = handle_train(message, context)
        if faulty and self.fault == "refused":
            reply.content["reply"]["checksum"] ^= 1  # report-every 1: every reply carries a checksum
        return reply

    def get_node_ids(self) -> list[int]:
        nodes = list(super().get_node_ids())
        return [n for n in nodes if n != self.node] if self.fault == "unserved" and self.rounds_done >= 1 else nodes

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        if self.fault == "late":
            for message in messages:
                if message.metadata.dst_node_id == self.node and message.metadata.group_id not in ("1", "1-identify"):
                    self._replies.pop(message.metadata.message_id, None)
        return ids


@pytest.mark.parametrize("fault", ["error", "refused", "late", "unserved"])
def test_a_partition_silent_for_the_grace_stops_the_run_mid_run(task_identity, fault: str) -> None:
    """Always erroring, always refused, always late, or no node at all: once the partition has contributed nothing for
    GRACE_ROUNDS rounds and node-wait-timeout seconds, the run stops naming it (and its node and last error)."""
    grid = FaultyNodeGrid(fault)
    strategy = LaqStrategy(LAQ, M, report_every=1, node_wait_timeout=0.0)
    with pytest.raises(RunStopped, match=r"partition\(s\) \[1\]") as stopped:
        run_rounds(strategy, grid, theta0(), 20, on_round_end=lambda r: setattr(grid, "rounds_done", r))
    # Round 1 contributed; a failure is known after its round (rounds 2, 3, 4 ran, round 5 does not start), a partition
    # without a node before it (rounds 2 and 3 ran on its stale copy, round 4 would be the third).
    assert max(strategy.round_stats) == (GRACE_ROUNDS if fault == "unserved" else 1 + GRACE_ROUNDS)
    expected = {"error": "disk full", "refused": "checksum", "late": "no reply within round-timeout",
                "unserved": "no connected node has served partition(s) [1] for 3 rounds"}[fault]
    assert expected in str(stopped.value)
    if fault != "unserved":
        assert f"partition 1 (node {grid.node}): {GRACE_ROUNDS} round(s)" in str(stopped.value)


def test_a_partition_that_recovers_within_the_grace_lets_the_run_complete(tmp_path, task_identity) -> None:
    run_config = {**RUN_CONFIG, "rounds": 12, "out-dir": str(tmp_path), "run-name": "recovers", "node-wait-timeout": 0.01,
                  "report-every": 1}
    grid = InProcessGrid(failing_on(2, ConnectionError("uplink dropped"), range(4, 4 + GRACE_ROUNDS - 1)), M, run_config)
    serve(run_config, grid)
    rows, status = read_results(tmp_path / "recovers.jsonl")
    assert status["status"] == "completed"
    assert [row["rejected"] for row in rows[1:]] == [0, 0, 0] + [1] * (GRACE_ROUNDS - 1) + [0] * (10 - GRACE_ROUNDS)


def test_a_partition_that_never_contributed_fails_even_a_short_run(tmp_path, task_identity) -> None:
    run_config = {**RUN_CONFIG, "rounds": 2, "out-dir": str(tmp_path), "run-name": "short"}
    grid = InProcessGrid(failing_on(1, ValueError("bad shard")), M, run_config)
    with pytest.raises(RunStopped, match=r"round 2: the run ends while partition\(s\) \[1\]"):
        serve(run_config, grid)
    assert read_results(tmp_path / "short.jsonl")[1]["status"] == "failed"


# -- 3. identification: bounded, backed off, never in the way --------------------------------------------------------


def grid_with_strangers(count: int) -> tuple[CountingGrid, list[int]]:
    """The M workers plus ``count`` listed nodes whose ClientApp raises on the query."""
    broken = ClientApp()

    @broken.query()
    def identify(message: Message, context: Context) -> Message:
        raise FileNotFoundError("no node config file")

    grid = CountingGrid(client_app, M + count, RUN_CONFIG)
    strangers = list(grid.contexts)[M:]
    for context in grid.contexts.values():
        context.node_config["num-partitions"] = M
    grid.client_app = lambda message, context: (broken if context.node_id in strangers else client_app)(message, context)
    return grid, strangers


def test_nodes_that_cannot_identify_are_asked_a_bounded_number_of_times(task_identity) -> None:
    """50 extra listed nodes whose ClientApp errors on the query, beside the 3 workers: each is asked in rounds 1, 2,
    4, 8, 16 (back-off), never more than MAX_QUERY_ATTEMPTS times, and the run trains as if they were not there."""
    clean = LaqStrategy(LAQ, M)
    run_rounds(clean, InProcessGrid(client_app, M, RUN_CONFIG), theta0(), 6)
    grid, strangers = grid_with_strangers(50)
    strategy = LaqStrategy(LAQ, M)
    run_rounds(strategy, grid, theta0(), 6)
    assert all(grid.queries[node] == 3 for node in strangers)  # rounds 1, 2 and 4 (before: every round)
    assert all(grid.queries[node] == 1 for node in list(grid.contexts)[:M])
    np.testing.assert_array_equal(strategy.state.theta, clean.state.theta)
    grid, strangers = grid_with_strangers(50)
    run_rounds(LaqStrategy(LAQ, M), grid, theta0(), 40)
    assert all(grid.queries[node] == MAX_QUERY_ATTEMPTS for node in strangers)  # rounds 1, 2, 4, 8, 16, then never


def test_a_node_that_never_answers_the_query_costs_no_round_timeout(task_identity) -> None:
    """A listed node that never answers: its question waits beside the rounds, is given up after round-timeout and
    asked again later, at most MAX_QUERY_ATTEMPTS times; no round waits for it."""
    grid = CountingGrid(client_app, M + 1, RUN_CONFIG)
    silent = list(grid.contexts)[M]
    for context in grid.contexts.values():
        context.node_config["num-partitions"] = M
    grid.contexts[silent].node_config = {}  # were it to answer, its answer would stop the run
    deliver = grid._deliver
    unanswered = []

    def deliver_unless_silent(message, deflated):
        if message.metadata.dst_node_id == silent:
            unanswered.append(message.metadata.message_id)
        return deliver(message, deflated)

    grid._deliver = deliver_unless_silent
    pull = grid.pull_messages
    grid.pull_messages = lambda ids: [reply for reply in pull(ids) if reply.metadata.reply_to_message_id not in unanswered]
    strategy = LaqStrategy(LAQ, M, round_timeout=0.0)  # every unanswered question has waited long enough at once
    run_rounds(strategy, grid, theta0(), 30)
    assert grid.queries[silent] == MAX_QUERY_ATTEMPTS
    assert strategy.membership.queries.nodes[silent].last_error.startswith("no answer within round-timeout")


# -- 4. a ClientApp without laq-fl's query handler -------------------------------------------------------------------


def test_a_client_app_without_the_query_handler_is_named_in_the_stop_message(task_identity) -> None:
    """A user's own ClientApp (a train handler only): every node is connected, yet no partition is served; the run
    stops before round 1 naming the nodes that answered the query with an error, and the error."""
    own = ClientApp()

    @own.train()
    def train(message: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=message)

    grid = InProcessGrid(own, M, RUN_CONFIG)
    strategy = LaqStrategy(LAQ, M, node_wait_timeout=0.0)
    with pytest.raises(RunStopped) as stopped:
        run_rounds(strategy, grid, theta0(), 3)
    message = str(stopped.value)
    assert "round 1: no connected node has served partition(s) [0, 1, 2] before the first round" in message
    assert f"{M} node(s) answered the query" in message and "No query function registered" in message
    assert all(f"node {node}: " in message for node in grid.contexts)


def test_the_protocol_state_stays_consistent_when_nodes_swap_and_fail(task_identity) -> None:
    """Swaps, errors and restarts together: every record's sync state matches whether it has a copy."""
    grid = CountingGrid(failing_on(1, ConnectionError("flaky"), range(6, 8)), M, RUN_CONFIG)
    nodes = list(grid.contexts)

    def disturb(server_round: int) -> None:
        if server_round == 3:
            a, b = (grid.contexts[nodes[i]] for i in (0, 2))
            a.node_config["partition-id"], b.node_config["partition-id"] = 2, 0
            a.state, b.state = RecordDict(), RecordDict()
        for record in strategy.state.workers.values():
            assert (record.copy is None) == (record.sync is Sync.NEW)

    strategy = LaqStrategy(LAQ, M, report_every=2)
    run_rounds(strategy, grid, theta0(), 15, on_round_end=disturb)
    assert_every_serving_node_in_sync(strategy, grid)


def test_before_round_one_a_node_whose_first_answer_failed_is_asked_again_after_seconds(task_identity) -> None:
    """While the server waits for a node per partition, rounds do not advance: a node whose query raised once is
    asked again after a second (the back-off counts seconds there), and the run starts."""
    grid = CountingGrid(client_app, M, RUN_CONFIG)
    node = list(grid.contexts)[1]
    failures = []

    def flaky_identify(message: Message, context: Context) -> Message:
        if context.node_id == node and message.metadata.message_type == MessageType.QUERY and not failures:
            failures.append(message)
            raise ConnectionError("warm worker starting")
        return client_app(message, context)

    grid.client_app = flaky_identify
    strategy = LaqStrategy(LAQ, M, node_wait_timeout=30.0)
    run_rounds(strategy, grid, theta0(), 2)
    assert len(failures) == 1 and grid.queries[node] == 2
    assert strategy.round_stats[1].uploads == M


def test_flowers_own_start_loop_also_refuses_to_end_a_run_missing_a_partition(task_identity) -> None:
    """Strategy.start is Flower's loop, told its last round: a partition failing in the last rounds fails the run."""
    grid = InProcessGrid(failing_on(0, ConnectionError("gone"), range(4, 7)), M, RUN_CONFIG)
    with pytest.raises(RunStopped, match=r"round 6: the run ends while partition\(s\) \[0\]"):
        LaqStrategy(LAQ, M).start(grid, theta0(), num_rounds=6)


def test_a_misconfigured_node_joining_mid_run_is_named_not_fatal(task_identity, caplog) -> None:
    """After round 3 a fourth SuperNode appears with partition-id 7 (num-clients 3): before round 1 that would stop
    the run; mid-run it is named in a warning, asked again with back-off, and the run completes as without it."""
    clean = LaqStrategy(LAQ, M)
    run_rounds(clean, InProcessGrid(client_app, M, RUN_CONFIG), theta0(), 10)
    grid = CountingGrid(client_app, M + 1, RUN_CONFIG)
    stray = list(grid.contexts)[M]
    for context in grid.contexts.values():
        context.node_config["num-partitions"] = M
    grid.contexts[stray].node_config["partition-id"] = 7
    listed = grid.get_node_ids
    grid.get_node_ids = lambda: [n for n in listed() if n != stray or grid.rounds > 3]
    grid.rounds = 0
    strategy = LaqStrategy(LAQ, M)
    run_rounds(strategy, grid, theta0(), 10, on_round_end=lambda r: setattr(grid, "rounds", r))
    assert f"node {stray} could not say which partition it serves (its node config does not fit" in caplog.text
    assert 1 <= grid.queries[stray] <= 3  # rounds 4, 5, 7
    np.testing.assert_array_equal(strategy.state.theta, clean.state.theta)
