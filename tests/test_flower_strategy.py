"""LaqStrategy with hand-built replies: uploads, skips, errors, malformed payloads, lost replies."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from laq_fl.codec import PayloadError
from laq_fl.compressors import Grid, Identity
from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import state_checksum
from laq_fl.flower.messages import identity_content, read_train_request, reply_content
from laq_fl.flower.strategy import LaqStrategy, RunStopped
from laq_fl.flower.wire import WireMeter
from laq_fl.protocol import NodeIdentity, Sync

SIZE = 6
NODES = [101, 202, 303]


class FakeGrid:
    """Lists ``nodes`` and answers the strategy's identify queries at once: node i of the list serves partition i,
    unless ``partitions`` says otherwise; every node holds no state. Train messages are the test's to answer."""

    def __init__(self, nodes: list[int] | None = None, partitions: dict[int, int] | None = None) -> None:
        self.nodes = list(NODES) if nodes is None else nodes
        self.partitions = partitions or {node: i for i, node in enumerate(self.nodes)}
        self.answers: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            assert message.metadata.message_type == MessageType.QUERY
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = message.metadata.dst_node_id
            answer = Message(identity_content(NodeIdentity(self.partitions[node])), reply_to=message)
            answer.metadata.__dict__["_src_node_id"] = node
            self.answers[message.metadata.message_id] = answer
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.answers.pop(key) for key in message_ids if key in self.answers]


def quantized(grad: np.ndarray, q_hat: np.ndarray, bits: int = 4) -> np.ndarray:
    """Q = Q_hat + Q(g - Q_hat), eq. (5)-(6), as the worker forms it."""
    return (q_hat + Grid(bits).compress(grad.astype(np.float64) - q_hat).value).astype(np.float32)


def configure(strategy: LaqStrategy, server_round: int, grid: FakeGrid | None = None) -> dict[int, Message]:
    theta0 = ArrayRecord([np.zeros(SIZE, np.float32)])
    messages = list(strategy.configure_train(server_round, theta0, ConfigRecord(), grid or FakeGrid()))  # type: ignore[arg-type]
    for message in messages:  # what a Grid does when it pushes
        message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return {message.metadata.dst_node_id: message for message in messages}


def reply(
    to: Message, partition: int, grad: np.ndarray | None, q_hat: np.ndarray, bits: int = 4, loss: float = 1.0,
    report: bool = False,
) -> Message:
    """The worker's reply: an upload of ``grad`` against ``q_hat``, or (``grad=None``) a skip, bare unless ``report``;
    its version follows the instruction (one more on an upload, 1 after a reset)."""
    payload = None
    copy = q_hat
    request = read_train_request(to)
    version = 0 if request.instruction.reset else request.version
    if grad is not None:
        payload = Grid(bits).compress(grad.astype(np.float64) - q_hat).payload
        copy = quantized(grad, q_hat, bits)
        version += 1
    content = reply_content(partition, loss, payload, state_checksum(copy), report, version, 0.0)
    message = Message(content, reply_to=to)
    message.metadata.__dict__["_src_node_id"] = to.metadata.dst_node_id
    return message


@pytest.fixture
def strategy(task_identity) -> LaqStrategy:
    return LaqStrategy(AlgorithmConfig(algorithm="laq", bits=4, lr=0.1, xi=(0.5,)), 3, report_every=0, node_wait_timeout=0.0)


def grads(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SIZE).astype(np.float32) for _ in NODES]


def test_first_round_forces_everyone_and_uploads_update_theta(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    for message in sent.values():
        request = read_train_request(message)
        assert request.instruction.force_upload and request.instruction.reset  # no copy yet: upload from zero
        assert request.iteration == 0 and request.parts.compressor == Grid(4) and request.batch_size == 0
        np.testing.assert_array_equal(request.broadcast.theta, np.zeros(SIZE))
    g = grads(0)
    zeros = np.zeros(SIZE, np.float32)
    replies = [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["uploads"] == 3 and metrics["skips"] == 0 and metrics["rejected"] == 0
    assert metrics["payload-bits"] == 3 * (32 + 4 * SIZE)
    expected_aggregate = sum(quantized(gi, zeros).astype(np.float64) for gi in g)
    np.testing.assert_allclose(strategy.state.aggregate, expected_aggregate)
    (theta,) = arrays.to_numpy_ndarrays()
    np.testing.assert_allclose(theta, -0.1 * expected_aggregate, rtol=1e-6)


def test_mixed_round_upload_skip_error_and_malformed(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(1)
    strategy.aggregate_train(1, [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES)])
    copies_before = {NODES[p]: copy.copy() for p, copy in strategy.state.copies.items()}

    sent = configure(strategy, 2)
    assert not any(read_train_request(m).instruction.force_upload for m in sent.values())
    fresh = grads(2)
    upload = reply(sent[NODES[0]], 0, fresh[0], copies_before[NODES[0]])
    skip = reply(sent[NODES[1]], 1, None, copies_before[NODES[1]])
    error = Message(Error(code=2, reason="boom"), reply_to=sent[NODES[2]])
    arrays, metrics = strategy.aggregate_train(2, [skip, error, upload])
    assert (metrics["uploads"], metrics["skips"], metrics["rejected"]) == (1, 1, 1)
    expected_new = quantized(fresh[0], copies_before[NODES[0]])
    np.testing.assert_array_equal(strategy.state.copies[0], expected_new)
    np.testing.assert_array_equal(strategy.state.copies[1], copies_before[NODES[1]])
    np.testing.assert_array_equal(strategy.state.copies[2], copies_before[NODES[2]])  # stale copy kept
    np.testing.assert_allclose(
        strategy.state.aggregate, sum(c.astype(np.float64) for c in strategy.state.copies.values()), atol=1e-12
    )
    assert strategy.state.record(1).skip_clock == 1

    # The node whose reply failed is asked to resync: forced upload with reset, decoded against zero.
    sent = configure(strategy, 3)
    instruction = read_train_request(sent[NODES[2]]).instruction
    assert instruction.force_upload and instruction.reset
    assert not read_train_request(sent[NODES[1]]).instruction.reset
    resync = reply(sent[NODES[2]], 2, fresh[2], zeros)
    strategy.aggregate_train(3, [resync])
    np.testing.assert_array_equal(strategy.state.copies[2], quantized(fresh[2], zeros))
    assert strategy.state.record(2).sync is Sync.IN_SYNC
    assert [strategy.state.record(p).sync for p in (0, 1)] == [Sync.RESET] * 2  # they did not reply in round 3


GOOD_PAYLOAD = Grid(4).compress(np.ones(SIZE)).payload
GOOD_CHECKSUM = state_checksum(quantized(np.ones(SIZE, np.float32), np.zeros(SIZE, np.float32)))


@pytest.mark.parametrize(
    "content",
    [
        RecordDict({"upload": ConfigRecord({"payload": b"\x00" * 3})}),  # another record name
        reply_content(0, 1.0, b"\x00\x00\x80\x3f" + b"\x00", 0, version=1),  # radius 1.0, one byte: too short
        reply_content(0, 1.0, b"\x00\x00\xc0\x7f" + b"\x00" * 3, 0, version=1),  # NaN radius
        reply_content(0, float("nan"), GOOD_PAYLOAD, GOOD_CHECKSUM, version=1),  # NaN loss
        reply_content(0, 1.0, GOOD_PAYLOAD, GOOD_CHECKSUM ^ 1, version=1),  # the worker's state is not what the server rebuilds
        reply_content(0, 1.0, GOOD_PAYLOAD, 2**32, version=1),  # not a CRC-32
        reply_content(0, 1.0, GOOD_PAYLOAD, GOOD_CHECKSUM, version=2),  # a future version
        reply_content(0, 1.0, GOOD_PAYLOAD, GOOD_CHECKSUM, version=0),  # a stale version
        reply_content(1, 1.0, GOOD_PAYLOAD, GOOD_CHECKSUM, version=1),  # another partition's answer
        reply_content(0, None, None, 0, version=0),  # "my state differs", yet it is the server's: nonsense
        RecordDict({"reply": ConfigRecord({"loss": 1.0, "checksum": 0, "version": 1, "payload": GOOD_PAYLOAD,
                                           "error-sq": 0.0})}),  # no partition id
        RecordDict({"reply": ConfigRecord({"partition-id": 0, "loss": 1.0, "checksum": GOOD_CHECKSUM,
                                           "payload": GOOD_PAYLOAD, "error-sq": 0.0})}),  # no version
        RecordDict({"reply": ConfigRecord({"partition-id": 0, "loss": 1.0, "checksum": 0, "version": 1, "payload": "text",
                                           "error-sq": 0.0})}),
        RecordDict({"reply": ConfigRecord({"partition-id": 0, "loss": 1.0, "checksum": GOOD_CHECKSUM, "version": 1,
                                           "payload": GOOD_PAYLOAD})}),  # no error-sq
        RecordDict({"reply": ConfigRecord({"partition-id": 0, "loss": 1.0, "checksum": GOOD_CHECKSUM, "version": 1,
                                           "payload": GOOD_PAYLOAD, "error-sq": 0.0, "extra": 1})}),  # unknown key
        RecordDict({"reply": ConfigRecord({"partition-id": 0, "loss": 1.0, "checksum": GOOD_CHECKSUM, "version": 1,
                                           "payload": GOOD_PAYLOAD, "error-sq": 0.0}), "extra": MetricRecord({"x": 1})}),
        RecordDict({"metrics": MetricRecord({"partition-id": 0, "loss": 1.0})}),  # the old format
    ],
)
def test_malformed_reply_is_rejected_and_state_kept(strategy: LaqStrategy, content: RecordDict) -> None:
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(3)
    good = [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES[1:], start=1)]
    bad = Message(content, reply_to=sent[NODES[0]])
    _, metrics = strategy.aggregate_train(1, [bad, *good])
    assert metrics["rejected"] == 1 and metrics["lost"] == 0 and metrics["uploads"] == 2
    assert 0 not in strategy.state.copies and strategy.state.record(0).needs_reset
    np.testing.assert_allclose(strategy.state.aggregate, sum(c.astype(np.float64) for c in strategy.state.copies.values()))


def test_missing_and_foreign_replies(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(4)
    first = reply(sent[NODES[0]], 0, g[0], zeros)
    duplicate = reply(sent[NODES[0]], 0, g[1], zeros)
    _, metrics = strategy.aggregate_train(1, [first, duplicate])
    assert metrics["uploads"] == 1 and metrics["rejected"] == 1 and metrics["lost"] == 2  # two nodes never replied
    np.testing.assert_array_equal(strategy.state.copies[0], quantized(g[0], zeros))


def test_minibatch_members_ask_for_minibatches(task_identity) -> None:
    full = LaqStrategy(AlgorithmConfig(algorithm="lag"), 2)
    slaq = LaqStrategy(AlgorithmConfig(algorithm="slaq", batch_size=32), 2)
    assert full.batch_size == 0 and slaq.batch_size == 32
    assert all(read_train_request(m).batch_size == 32 for m in configure(slaq, 1, FakeGrid(NODES[:2])).values())


def test_theta0_comes_from_the_arrays_passed_in(task_identity) -> None:
    strategy = LaqStrategy(AlgorithmConfig(algorithm="gd", lr=0.5), 1)
    start = np.arange(SIZE, dtype=np.float32)
    (message,) = strategy.configure_train(1, ArrayRecord([start]), ConfigRecord(), FakeGrid([101]))
    message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    np.testing.assert_array_equal(read_train_request(message).broadcast.theta, start)
    grad = np.ones(SIZE, np.float32)
    upload = Message(reply_content(0, 1.0, Identity().compress(grad).payload, state_checksum(grad), version=1, error_sq=0.0),
                     reply_to=message)
    upload.metadata.__dict__["_src_node_id"] = 101
    arrays, _ = strategy.aggregate_train(1, [upload])
    np.testing.assert_array_equal(arrays.to_numpy_ndarrays()[0], start - 0.5)


def test_restarted_node_does_not_count_twice(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(5)
    strategy.aggregate_train(1, [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES)])
    before = strategy.state.copies[2].copy()
    # Node 303 restarts and comes back as 404 (same partition 2, new id, empty state); 303 is gone.
    grid = FakeGrid([101, 202, 404])
    sent = configure(strategy, 2, grid)
    assert set(sent) == {101, 202, 404} and set(strategy.state.copies) == {0, 1, 2}
    request = read_train_request(sent[404])
    assert request.restore is not None and not request.instruction.reset  # its state comes back from the server
    np.testing.assert_array_equal(request.restore.copy, before)
    replies = [reply(sent[101], 0, None, zeros), reply(sent[202], 1, None, zeros), reply(sent[404], 2, g[2], before)]
    _, metrics = strategy.aggregate_train(2, replies)
    assert metrics["uploads"] == 1 and metrics["restores"] == 1 and metrics["rejected"] == 0
    np.testing.assert_array_equal(strategy.state.copies[2], quantized(g[2], before))
    np.testing.assert_allclose(strategy.state.aggregate, sum(c.astype(np.float64) for c in strategy.state.copies.values()),
                               atol=1e-12)


def test_two_nodes_with_one_partition_count_once(strategy: LaqStrategy) -> None:
    grid = FakeGrid([101, 202, 303, 404], {101: 0, 202: 1, 303: 2, 404: 0})
    sent = configure(strategy, 1, grid)
    assert set(sent) == {101, 202, 303}  # 404 duplicates partition 0: never contacted while 101 answers
    assert strategy.round_stats == {} and strategy._round.stats.duplicates == 1


def test_a_partition_without_a_node_stops_the_run_before_round_one(strategy: LaqStrategy) -> None:
    grid = FakeGrid([101, 202, 404], {101: 0, 202: 1, 404: 0})
    with pytest.raises(RunStopped, match=r"round 1: no connected node has served partition\(s\) \[2\] before the first"):
        configure(strategy, 1, grid)


def test_uploads_apply_in_partition_order_whatever_the_arrival_and_node_order(task_identity) -> None:
    # float64 addition is not associative: 1 + 1e17 - 1e17 = 0 but -1e17 + 1e17 + 1 = 1. Partition order gives 0.
    nodes = [303, 101, 202]  # partition 0, 1, 2: node-id order differs from partition order
    strategy = LaqStrategy(AlgorithmConfig(algorithm="gd", lr=1.0), 3)
    sent = configure(strategy, 1, FakeGrid(nodes))
    values = {0: 1.0, 1: 1e17, 2: -1e17}
    replies = []
    for partition, node in enumerate(nodes):
        gradient = np.full(SIZE, values[partition], np.float32)
        message = Message(reply_content(partition, 1.0, Identity().compress(gradient).payload, state_checksum(gradient),
                                        version=1, error_sq=0.0), reply_to=sent[node])
        message.metadata.__dict__["_src_node_id"] = node
        replies.append(message)
    strategy.aggregate_train(1, list(reversed(replies)))
    partition_order = (np.float64(1.0) + np.float64(np.float32(1e17))) + np.float64(np.float32(-1e17))
    assert partition_order == 0.0
    np.testing.assert_array_equal(strategy.state.aggregate, np.full(SIZE, partition_order))


def test_byte_metrics_equal_the_meter(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(6)
    replies = [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES)]
    _, metrics = strategy.aggregate_train(1, replies)
    meter = WireMeter()
    work = strategy._round  # round 1 identified every node: a query and its answer each
    assert work.traffic.uplink_bytes > 0 and work.traffic.downlink_bytes > 0
    assert metrics["identify-bytes"] == work.traffic.uplink_bytes + work.traffic.downlink_bytes
    assert metrics["uplink-bytes"] == sum(meter.uplink_bytes(r) for r in replies) + work.traffic.uplink_bytes
    assert metrics["downlink-bytes"] == sum(meter.downlink_bytes(m) for m in sent.values()) + work.traffic.downlink_bytes
    assert metrics["downlink-bytes"] > 4 * SIZE


def test_a_skip_answering_a_forced_upload_is_rejected(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)  # round 1: every upload is forced
    zeros = np.zeros(SIZE, np.float32)
    g = grads(7)
    replies = [reply(sent[NODES[0]], 0, None, zeros)] + [reply(sent[n], i, g[i], zeros) for i, n in enumerate(NODES[1:], 1)]
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["uploads"], metrics["skips"], metrics["rejected"]) == (2, 0, 1)
    assert 0 not in strategy.state.copies and strategy.state.record(0).needs_reset
    resync = read_train_request(configure(strategy, 2)[NODES[0]]).instruction
    assert resync.force_upload and resync.reset


def test_the_well_formed_twin_of_the_malformed_replies_is_accepted(strategy: LaqStrategy) -> None:
    sent = configure(strategy, 1)
    good = Message(reply_content(0, 1.0, GOOD_PAYLOAD, GOOD_CHECKSUM, version=1, error_sq=0.0), reply_to=sent[NODES[0]])
    good.metadata.__dict__["_src_node_id"] = NODES[0]
    _, metrics = strategy.aggregate_train(1, [good])
    assert metrics["uploads"] == 1 and metrics["rejected"] == 0 and metrics["lost"] == 2  # the two silent nodes


def test_bare_skips_report_rounds_and_checksums_of_skips(task_identity) -> None:
    strategy = LaqStrategy(AlgorithmConfig(algorithm="laq", bits=4, lr=0.1, xi=(0.5,)), 3, report_every=2)
    strategy.num_rounds = 6
    assert [strategy.reports_in(r) for r in range(1, 7)] == [True, False, True, False, True, True]  # and the last
    sent = configure(strategy, 1)
    zeros = np.zeros(SIZE, np.float32)
    g = grads(8)
    strategy.aggregate_train(1, [reply(sent[node], i, g[i], zeros) for i, node in enumerate(NODES)])
    copies = {NODES[p]: copy for p, copy in strategy.state.copies.items()}
    sent = configure(strategy, 2)  # no report: skips are bare, the loss comes from the upload alone
    assert not read_train_request(sent[NODES[0]]).report
    bare = reply(sent[NODES[0]], 0, None, copies[NODES[0]])
    assert len(bare.content) == 0
    replies = [bare, reply(sent[NODES[1]], 1, None, copies[NODES[1]]), reply(sent[NODES[2]], 2, g[0], copies[NODES[2]], loss=0.25)]
    _, metrics = strategy.aggregate_train(2, replies)
    assert (metrics["uploads"], metrics["skips"], metrics["rejected"]) == (1, 2, 0)
    assert metrics["train-loss"] == 0.25 and metrics["loss-reports"] == 1
    copies = {NODES[p]: copy for p, copy in strategy.state.copies.items()}
    sent = configure(strategy, 3)  # report round: skips carry loss and checksum, and a wrong one means a resync
    assert read_train_request(sent[NODES[0]]).report
    wrong = reply(sent[NODES[1]], 1, None, copies[NODES[1]] + 1, report=True, loss=0.5)
    replies = [reply(sent[NODES[0]], 0, None, copies[NODES[0]], report=True, loss=0.5), wrong]
    _, metrics = strategy.aggregate_train(3, replies)
    assert (metrics["skips"], metrics["rejected"], metrics["lost"], metrics["loss-reports"]) == (1, 1, 1, 1)
    assert metrics["loss-missing"] == 2
    assert strategy.state.record(1).sync is Sync.RESET
    sent = configure(strategy, 4)
    assert read_train_request(sent[NODES[1]]).instruction.reset
    copies = {NODES[p]: copy for p, copy in strategy.state.copies.items()}
    strategy.aggregate_train(4, [reply(sent[NODES[1]], 1, g[1], np.zeros(SIZE, np.float32))])
    sent = configure(strategy, 5)  # report round again: a bare skip breaks the protocol
    _, metrics = strategy.aggregate_train(5, [reply(sent[NODES[0]], 0, None, copies[NODES[0]])])
    assert (metrics["rejected"], metrics["lost"], metrics["skips"]) == (1, 2, 0)
    assert strategy.state.record(0).sync is Sync.RESET


def test_an_upload_whose_copy_overflows_is_rejected(strategy: LaqStrategy) -> None:
    """A finite radius near float32's maximum, added to a copy already there, would make Q_hat infinite."""
    huge = Grid(4).compress(np.full(SIZE, 3.0e38)).payload
    sent = configure(strategy, 1)
    first = Message(reply_content(0, 1.0, huge, 0, version=1, error_sq=0.0), reply_to=sent[NODES[0]])
    first.metadata.__dict__["_src_node_id"] = NODES[0]
    strategy.aggregate_train(1, [first])  # rejected for its checksum, but a copy near the maximum is possible
    strategy.state.commit(0, np.full(SIZE, 3.0e38, np.float32))
    with pytest.raises(PayloadError, match="overflows"):
        strategy.state.decode(0, huge)
