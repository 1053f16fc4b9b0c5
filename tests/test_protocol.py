"""The protocol without Flower: the verdict on one reply, the sync state of a worker record, membership decisions.

The fuzz and resync tests here drive :func:`laq_fl.protocol.judge` directly; ``test_fuzz.py`` and
``test_state_identity.py`` drive the same protocol through the Flower Grid.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from laq_fl.config import AlgorithmConfig
from laq_fl.errors import PayloadError
from laq_fl.protocol import (
    Contributions,
    Expectation,
    NodeIdentity,
    Outcome,
    Queries,
    Sync,
    TrainReply,
    Verdict,
    judge,
)
from laq_fl.server_state import ServerState


class Fixed:
    """Checksums with known answers: a payload ``b"ok..."`` decodes to a copy with checksum ``upload``."""

    def __init__(self, held: int = 0x1234, upload: int = 0xBEEF) -> None:
        self._held, self._upload, self.decoded = held, upload, 0

    def of_upload(self, payload: bytes) -> int:
        self.decoded += 1
        if not payload.startswith(b"ok"):
            raise PayloadError("truncated")
        return self._upload

    def held(self) -> int:
        return self._held


EXPECTED = Expectation(partition=2, version=5, forced=False, reset=False, report=True)
UPLOAD = TrainReply(partition_id=2, loss=0.5, payload=b"ok-bytes", checksum=0xBEEF, version=6, error_sq=0.25)
SKIP = TrainReply(partition_id=2, loss=0.5, checksum=0x1234, version=5)
DIFFERS = TrainReply(partition_id=2, checksum=0x9999, version=0)


def test_the_valid_replies_are_accepted_for_what_they_are() -> None:
    assert judge(UPLOAD, EXPECTED, Fixed()) == Verdict(Outcome.UPLOAD)
    assert judge(SKIP, EXPECTED, Fixed()) == Verdict(Outcome.SKIP)
    assert judge(TrainReply(), dataclasses.replace(EXPECTED, report=False), Fixed()) == Verdict(Outcome.SKIP)
    assert judge(DIFFERS, EXPECTED, Fixed()) == Verdict(Outcome.STATE_DIFFERS)
    reset = dataclasses.replace(EXPECTED, version=0, forced=True, reset=True)
    assert judge(dataclasses.replace(UPLOAD, version=1), reset, Fixed()) == Verdict(Outcome.UPLOAD)


CORRUPTIONS = {
    "partition": lambda r: dataclasses.replace(r, partition_id=r.partition_id + 1),
    "version-up": lambda r: dataclasses.replace(r, version=r.version + 1),
    "version-down": lambda r: dataclasses.replace(r, version=r.version - 1),
    "checksum": lambda r: dataclasses.replace(r, checksum=1 if r.checksum is None else r.checksum ^ 1),
    "no-checksum": lambda r: dataclasses.replace(r, checksum=None),
    "payload": lambda r: dataclasses.replace(r, payload=b"garbage"),
}


@pytest.mark.parametrize("seed", range(20))
def test_fuzz_any_corruption_of_a_valid_reply_is_refused_never_raises(seed: int) -> None:
    """Random expectations (forced or not, reset or not, report round or not), a valid reply for each, then one or
    more random corruptions: the verdict is REFUSED with a reason, a wrong partition asks to identify the node again,
    and the valid reply itself is accepted."""
    rng = random.Random(seed)
    for _ in range(200):
        reset = rng.random() < 0.3
        expected = Expectation(partition=rng.randrange(5), version=0 if reset else rng.randrange(1, 50),
                               forced=reset or rng.random() < 0.3, reset=reset, report=rng.random() < 0.5)
        checksums = Fixed(held=rng.getrandbits(32), upload=rng.getrandbits(32))
        if expected.forced or rng.random() < 0.5:
            valid = TrainReply(expected.partition, 1.0, b"ok" + bytes(rng.randrange(9)), checksums.of_upload(b"ok"),
                               expected.version + 1, 0.0)
        else:
            valid = TrainReply(expected.partition, 1.0, None, checksums.held(), expected.version)
        assert judge(valid, expected, checksums).accepted
        names = rng.sample(sorted(name for name in CORRUPTIONS if name != "payload" or valid.payload), rng.randint(1, 3))
        if {"version-up", "version-down"} <= set(names):
            names.remove("version-down")  # the two would cancel out
        corrupted = valid
        for name in names:
            corrupted = CORRUPTIONS[name](corrupted)
        verdict = judge(corrupted, expected, checksums)
        assert verdict.outcome is Outcome.REFUSED and verdict.reason, (names, corrupted, expected)
        assert verdict.reidentify == ("partition" in names)


def test_a_skip_is_refused_where_the_protocol_needs_an_upload_or_a_report() -> None:
    forced = dataclasses.replace(EXPECTED, forced=True)
    assert "forced" in judge(SKIP, forced, Fixed()).reason
    assert "bare skip in a report round" in judge(TrainReply(), EXPECTED, Fixed()).reason


def test_state_differs_is_believed_only_where_it_can_be_true() -> None:
    """Resync, judged directly: the claim is refused when the server asked for a reset (the worker's state does not
    matter then) and when the version and checksum it reports are the server's own."""
    assert judge(DIFFERS, EXPECTED, Fixed()).outcome is Outcome.STATE_DIFFERS
    same = dataclasses.replace(DIFFERS, version=EXPECTED.version, checksum=0x1234)
    assert judge(same, EXPECTED, Fixed()).outcome is Outcome.REFUSED
    only_checksum_differs = dataclasses.replace(same, checksum=0x4321)
    assert judge(only_checksum_differs, EXPECTED, Fixed()).outcome is Outcome.STATE_DIFFERS
    reset = dataclasses.replace(EXPECTED, version=0, forced=True, reset=True)
    assert "answered a reset" in judge(DIFFERS, reset, Fixed()).reason
    assert judge(dataclasses.replace(DIFFERS, partition_id=0), EXPECTED, Fixed()).reidentify


def test_judge_decodes_a_payload_once_and_only_for_a_claimed_upload() -> None:
    checksums = Fixed()
    judge(UPLOAD, EXPECTED, checksums)
    judge(SKIP, EXPECTED, checksums)
    judge(dataclasses.replace(UPLOAD, partition_id=0), EXPECTED, checksums)  # misaddressed: not decoded
    assert checksums.decoded == 1


def server(algorithm: str = "laq", **settings) -> ServerState:
    return ServerState(np.zeros(4, np.float32), AlgorithmConfig(algorithm=algorithm, bits=4, **settings), 3)


@pytest.mark.parametrize("seed", range(10))
def test_sync_state_follows_the_protocol_under_any_sequence_of_events(seed: int) -> None:
    """Random uploads, skips, lost replies, state-differs claims, takeovers and deliveries: a record is NEW exactly
    when the server holds no copy, a reset is asked exactly for NEW and RESET, a restore exactly for RESTORE, and the
    aggregate stays the sum of the copies."""
    rng = np.random.default_rng(seed)
    state = server(downlink_bits=4)
    for _ in range(300):
        worker = int(rng.integers(3))
        event = rng.choice(["commit", "skip", "lost", "differs", "delivered", "taken-over", "step"])
        if event == "commit":
            state.commit(worker, rng.normal(size=4).astype(np.float32), float(rng.random()))
        elif event == "skip":
            state.skip(worker)
        elif event == "lost":
            state.lost(worker)
        elif event == "differs":
            state.state_differs(worker)
        elif event == "delivered":
            state.delivered(worker)
        elif event == "taken-over":
            state.taken_over(worker, NodeIdentity(worker, int(rng.integers(3)), None))
        else:
            state.step()
        for key, record in state.workers.items():
            assert (record.copy is None) == (record.sync is Sync.NEW)
            instruction = state.instruction(key)
            assert (instruction is not None and instruction.reset) == record.needs_reset
            assert (state.restore(key) is not None) == (record.sync is Sync.RESTORE)
        np.testing.assert_allclose(state.aggregate, sum(c.astype(np.float64) for c in state.copies.values()) if
                                   state.copies else 0.0, atol=1e-9)


def test_a_restore_carries_the_server_kept_part_arrays() -> None:
    """LASG-WK2's rule declares theta_hat as the iterate of the last upload: the server keeps it and restores it;
    LAQ's parts keep nothing the server sees."""
    wk2 = server("slaq-wk2")
    wk2.commit(0, np.ones(4, np.float32))
    wk2.state_differs(0)
    assert set(wk2.restore(0).held) == {"theta-hat"}
    laq = server("laq")
    laq.commit(0, np.ones(4, np.float32))
    laq.state_differs(0)
    assert laq.restore(0).held == {}


def three_workers() -> ServerState:
    state = server()
    for worker, value in enumerate((1.0, 2.0, 4.0)):
        state.commit(worker, np.full(4, value, np.float32))
    return state


@pytest.mark.parametrize("damage", ["row-missing", "out-of-range", "renamed", "aggregate-off", "aggregate-nan",
                                    "error-sq-nan", "negative-version", "twice"])
def test_a_damaged_checkpoint_never_leaves_the_aggregate_other_than_the_sum_of_the_copies(caplog, damage: str) -> None:
    arrays = three_workers().to_arrays()
    if damage == "row-missing":  # worker 1's row is gone, its copy still inside the stored aggregate
        arrays = {key: (np.delete(value, 1, axis=0) if key not in ("theta", "aggregate", "recent-sq-diffs", "iteration")
                        else value) for key, value in arrays.items()}
    elif damage in ("out-of-range", "renamed", "twice"):
        arrays["workers"] = np.asarray({"out-of-range": ["0", "7", "2"], "renamed": ["0", "x", "2"],
                                        "twice": ["0", "2", "2"]}[damage])
    elif damage.startswith("aggregate"):
        arrays["aggregate"] = arrays["aggregate"] + (np.nan if damage == "aggregate-nan" else 1.0)
    elif damage == "error-sq-nan":
        arrays["error-sqs"] = np.asarray([0.0, np.nan, 0.0])
    else:
        arrays["versions"] = np.asarray([1, -7, 1])
    back = ServerState.from_arrays(arrays, server().config, 3)
    np.testing.assert_array_equal(back.aggregate, sum(c.astype(np.float64) for c in back.copies.values()))
    assert set(back.workers) <= {0, 1, 2} and "checkpoint:" in caplog.text
    if not damage.startswith("aggregate"):
        assert len(back.workers) == 2 and all(back.instruction(w).reset for w in {0, 1, 2} - set(back.workers))


def test_an_undamaged_checkpoint_keeps_the_aggregate_bit_for_bit(caplog) -> None:
    state = three_workers()
    state.aggregate += 1e-13  # the rounding an incremental sum collects over a run
    back = ServerState.from_arrays(state.to_arrays(), state.config, 3)
    np.testing.assert_array_equal(back.aggregate, state.aggregate)
    assert "checkpoint:" not in caplog.text


def test_a_checkpoint_whose_theta_is_not_finite_is_refused() -> None:
    arrays = three_workers().to_arrays()
    arrays["theta"] = np.full(4, np.nan, np.float32)
    with pytest.raises(ValueError, match="theta is not finite"):
        ServerState.from_arrays(arrays, server().config, 3)


def test_a_checkpoint_row_that_cannot_be_read_back_is_reset_not_fatal(caplog) -> None:
    state = server()
    for worker, value in enumerate((1.0, 2.0, 4.0)):
        state.commit(worker, np.full(4, value, np.float32))
    arrays = state.to_arrays()
    arrays["copies"] = arrays["copies"].copy()
    arrays["copies"][1, 0] = np.nan  # one worker's copy is not a copy any more
    back = ServerState.from_arrays(arrays, state.config, 3)
    assert sorted(back.workers) == [0, 2] and back.instruction(1).reset
    np.testing.assert_array_equal(back.aggregate, np.full(4, 5.0))  # summed again from the copies that remain
    assert "cannot be read back" in caplog.text
    arrays = state.to_arrays()
    arrays["sync"] = np.asarray(["in-sync", "sideways", "in-sync"])
    assert sorted(ServerState.from_arrays(arrays, state.config, 3).workers) == [0, 2]


def test_queries_back_off_and_give_up() -> None:
    queries = Queries(max_attempts=4)
    asked_in = []
    for server_round in range(1, 30):
        if queries.due([7], server_round):
            queries.asked(7, now=float(server_round))
            asked_in.append(server_round)
            queries.failed(7, server_round, "boom")
    assert asked_in == [1, 2, 4, 8]
    assert queries.errors([7, 8]) == {7: "boom"}
    queries.answered(7)
    assert queries.due([7], 30) == [7]  # identified, then forgotten: asked afresh


def test_a_pending_query_expires_after_its_patience() -> None:
    queries = Queries()
    queries.asked(3, now=10.0)
    assert queries.due([3], 1) == [] and queries.expired(now=15.0, patience=10.0) == []
    assert queries.expired(now=20.0, patience=10.0) == [3]


def test_contributions_stop_after_the_grace_in_rounds_and_seconds() -> None:
    tracker = Contributions(3, grace_rounds=3)
    for now in (0.0, 1.0, 2.0):
        tracker.contributed(0)
        tracker.failed(1, now, 11, "error reply: boom")
        tracker.failed(2, now, None, "no connected node serves it")
    assert tracker.stuck(now=2.0, min_seconds=60.0) == []  # three rounds, but not yet a minute
    assert tracker.stuck(now=60.0, min_seconds=60.0) == [1, 2]
    assert tracker.missing_at_end(holding=[0, 1, 2]) == [1, 2]
    assert "partition 1 (node 11): 3 round(s), last: error reply: boom" in tracker.describe([1])
    tracker.contributed(1)
    assert tracker.stuck(now=100.0, min_seconds=0.0) == [2] and tracker.missing_at_end(holding=[0, 1, 2]) == [2]
    fresh = Contributions(2)
    fresh.contributed(0)
    assert fresh.missing_at_end(holding=[0]) == [1]  # the server holds no copy of it: it never contributed


def test_before_the_first_round_the_back_off_counts_seconds() -> None:
    queries = Queries()
    queries.asked(5, now=0.0)
    queries.failed(5, server_round=1, reason="boom", now=0.0)
    assert queries.due([5], 1) == [] and queries.due([5], 1, now=0.5) == []
    assert queries.due([5], 1, now=1.0) == [5]  # a second later, though still before round 1
    queries.asked(5, now=1.0)
    queries.failed(5, server_round=1, reason="boom", now=1.0)
    assert queries.due([5], 1, now=2.5) == [] and queries.due([5], 1, now=3.0) == [5]  # then two seconds
