"""1,000 corrupted replies thrown at the strategy: none raises, every one is refused, counted and logged with its
node and reason, the lazy aggregate stays the sum of the copies, and the workers end in sync with the server."""

from __future__ import annotations

import math
import random
from collections import Counter
from uuid import uuid4

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from laq_fl.config import AlgorithmConfig
from laq_fl.flower.client import handle_train, load_state
from laq_fl.flower.grid import InProcessGrid, through_the_wire
from laq_fl.flower.messages import PAYLOAD, REPLY
from laq_fl.flower.serverapp import run_rounds
from laq_fl.flower.strategy import LaqStrategy
from laq_fl.models import FlatModel

M = 3
CORRUPTED = 1000


def _reply_record(reply: Message) -> dict | None:
    record = reply.content.config_records.get(REPLY)
    return None if record is None else dict(record)


def corrupt(reply: Message, rng: random.Random) -> tuple[str, RecordDict] | None:
    """A content that the protocol must refuse, made from a real reply; ``None`` when the kind does not apply."""
    record = _reply_record(reply)
    kind = rng.choice(["truncate", "extend", "bitflip", "rename", "type", "nonfinite", "version", "record",
                       "partition", "checksum", "garbage-skip"])
    if kind == "garbage-skip":
        return kind, RecordDict({"metrics": MetricRecord({"loss": 1.0})})
    if kind == "record":
        return kind, RecordDict({**({REPLY: ConfigRecord(record)} if record else {}), "extra": MetricRecord({"x": 1.0})})
    if record is None or PAYLOAD not in record:
        return None  # a bare skip has nothing else to corrupt
    payload: bytes = record[PAYLOAD]
    if kind == "truncate":
        record[PAYLOAD] = payload[: rng.randrange(len(payload))]
    elif kind == "extend":
        record[PAYLOAD] = payload + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
    elif kind == "bitflip":
        position = rng.randrange(8 * len(payload))
        flipped = bytearray(payload)
        flipped[position // 8] ^= 1 << (position % 8)
        record[PAYLOAD] = bytes(flipped)
    elif kind == "rename":
        key = rng.choice(sorted(record))
        record[key + "-x"] = record.pop(key)
    elif kind == "type":
        key = rng.choice(["partition-id", "version", "checksum", "loss", "payload", "error-sq"])
        # -1 is a valid loss (a number), so it is a wrong value only for the other keys
        record[key] = rng.choice(["text", True, [1, 2]] + ([-1] if key != "loss" else []) if key != "payload" else ["text", 7])
    elif kind == "nonfinite":
        record[rng.choice(["loss", "error-sq"])] = rng.choice([math.nan, math.inf, -math.inf])
    elif kind == "version":
        record["version"] = max(0, record["version"] + rng.choice([-1, 1, 2, 100]))
        if record["version"] == _reply_record(reply)["version"]:
            record["version"] += 1
    elif kind == "partition":
        record["partition-id"] = (record["partition-id"] + rng.randint(1, M - 1)) % M
    elif kind == "checksum":
        record["checksum"] ^= 1 << rng.randrange(32)
    return kind, RecordDict({REPLY: ConfigRecord(record)})


class FuzzGrid(InProcessGrid):
    """Delivers to real workers, then corrupts one reply per round, answers one message twice, and sends one reply
    to a message that does not exist, until ``CORRUPTED`` bad replies went out; counts what it did by kind."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(handle_train, M, {"dataset": "synthetic", "num-clients": M, "data-dir": "/unused"})
        self.rng = random.Random(seed)
        self.kinds: Counter = Counter()
        self.bad_nodes: list[int] = []

    @property
    def injected(self) -> int:
        return sum(self.kinds.values())

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        if self.injected >= CORRUPTED or any(m.metadata.message_type == MessageType.QUERY for m in messages):
            return ids
        replies = {i: self._replies[i] for i in ids if not self._replies[i].has_error()}
        if len(replies) < 2:
            return ids
        victim = self.rng.choice(sorted(replies))
        reply = replies[victim]
        made = corrupt(reply, self.rng)
        kind, content = made if made is not None else ("wrong-type", RecordDict({REPLY: ConfigRecord({"partition-id": "0"})}))
        reply.content = content
        self.record(kind, reply.metadata.src_node_id)
        if self.injected < CORRUPTED and self.rng.random() < 0.3:  # an error reply in place of a good one
            other = self.rng.choice(sorted(set(replies) - {victim}))
            original = self._replies[other]
            error = Message(Error(code=0, reason="injected"), reply_to=_request_of(original))
            error.metadata.__dict__["_src_node_id"] = original.metadata.src_node_id
            self._replies[other] = error
            self.record("error-reply", original.metadata.src_node_id)
        source = self._replies[self.rng.choice(sorted(replies))]
        for kind, reply_to in (("duplicate", source.metadata.reply_to_message_id), ("unsolicited", str(uuid4()))):
            if self.injected >= CORRUPTED:
                break
            extra = through_the_wire(source)
            extra.metadata.__dict__["_reply_to_message_id"] = reply_to
            key = str(uuid4())
            extra.metadata.__dict__["_message_id"] = key
            self._replies[key] = extra
            ids.append(key)
            self.record(kind, extra.metadata.src_node_id)
        return ids

    def record(self, kind: str, node: int) -> None:
        self.kinds[kind] += 1
        self.bad_nodes.append(node)


def _request_of(reply: Message) -> Message:
    """A stand-in for the message ``reply`` answers (Flower's ``reply_to`` needs the request)."""
    request = Message(RecordDict(), reply.metadata.src_node_id, "train")
    request.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    request.metadata.__dict__["_src_node_id"] = reply.metadata.dst_node_id
    return request


def test_a_thousand_corrupted_replies(task_identity, caplog) -> None:
    grid = FuzzGrid(seed=11)
    strategy = LaqStrategy(AlgorithmConfig(algorithm="laq", bits=4, lr=0.02, t_bar=5), M, report_every=3)
    theta0 = ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)])
    sums = []

    def check(server_round: int) -> None:
        state = strategy.state
        sums.append(float(np.max(np.abs(state.aggregate - sum(c.astype(np.float64) for c in state.copies.values())))))

    run_rounds(strategy, grid, theta0, num_rounds=400, on_round_end=check)
    clean_rounds = [r for r, m in strategy.round_stats.items() if m.rejected == 0]
    assert clean_rounds[-5:] == list(range(396, 401))  # the last rounds ran without faults

    refused = sum(stats.rejected for stats in strategy.round_stats.values())
    assert grid.injected == CORRUPTED
    assert max(sums) < 1e-9
    assert refused == CORRUPTED, grid.kinds
    logged = [r.getMessage() for r in caplog.records if "refused a reply of node" in r.getMessage()]
    assert len(logged) == CORRUPTED and all(": " in line.split("refused a reply of node", 1)[1] for line in logged)
    assert Counter(int(line.split("refused a reply of node ")[1].split()[0].rstrip(":")) for line in logged) == Counter(grid.bad_nodes)
    state = strategy.state
    for context in grid.contexts.values():
        partition = context.node_config["partition-id"]
        worker = load_state(context, state.size, np.float32)
        np.testing.assert_array_equal(worker.copy, state.copies[partition])
