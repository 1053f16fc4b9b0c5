"""The roster: which node serves which partition, as nodes restart, duplicate, fail and vanish."""

from __future__ import annotations

import pytest

from laq_fl.protocol import NodeIdentity as Identity
from laq_fl.protocol import Roster


def roster_with(claims: dict[int, int], partitions: int = 3) -> Roster:
    roster = Roster(partitions)
    for node, partition in claims.items():
        roster.identify(node, Identity(partition))
    return roster


def test_first_claimant_serves_and_a_duplicate_is_reported_once() -> None:
    roster = roster_with({10: 0, 11: 1, 12: 2, 13: 0})
    first = roster.assign([10, 11, 12, 13])
    assert first.serving == {0: 10, 1: 11, 2: 12}
    assert first.duplicates == [(13, 0, 10)] and first.unserved == []
    assert {p for p, _, _ in first.taken_over} == {0, 1, 2}
    again = roster.assign([10, 11, 12, 13])
    assert again.serving == first.serving and again.duplicates == [] and again.taken_over == []


def test_a_failing_holder_hands_over_to_the_newest_healthy_claimant_and_is_not_a_duplicate() -> None:
    roster = roster_with({10: 0, 11: 1})
    roster.assign([10, 11])
    roster.failed(10)
    roster.assign([10, 11])  # no one else claims 0: the failing holder is retried
    assert roster.serving[0] == 10
    roster.identify(20, Identity(0))  # node 10 restarted as node 20; 10 is still listed (heartbeat not expired)
    outcome = roster.assign([10, 11, 20])
    assert outcome.serving[0] == 20 and outcome.taken_over == [(0, 10, 20)] and outcome.duplicates == []
    assert roster.assign([10, 11, 20]).duplicates == []  # the ghost of a restarted node is not a duplicate


def test_a_healthy_holder_keeps_its_partition_against_a_newcomer() -> None:
    roster = roster_with({10: 0})
    roster.assign([10])
    roster.identify(20, Identity(0))
    outcome = roster.assign([10, 20])
    assert outcome.serving == {0: 10} and outcome.duplicates == [(20, 0, 10)]


def test_a_gone_holder_is_replaced_and_a_returning_one_serves_again() -> None:
    roster = roster_with({10: 0, 11: 1}, partitions=2)
    roster.assign([10, 11])
    assert roster.assign([11]).unserved == [0]
    assert roster.assign([11]).unserved == [0]
    assert roster.assign([10, 11]).serving == {0: 10, 1: 11}  # back, same id
    roster.identify(30, Identity(0))
    assert roster.assign([11, 30]).taken_over == [(0, 10, 30)]


def test_identities_outside_the_partitions_are_refused() -> None:
    roster = Roster(3)
    with pytest.raises(ValueError, match="partition 3, outside 0..2"):
        roster.identify(1, Identity(3))
    assert roster.unknown([1, 2]) == [1, 2]
    roster.identify(2, Identity(1))
    assert roster.unknown([1, 2]) == [1]
    roster.forget(2)
    assert roster.unknown([1, 2]) == [1, 2]


def test_when_every_claimant_failed_the_one_that_failed_longest_ago_gets_another_try() -> None:
    """Node 10 fails once, node 20 takes over and fails every round: 10 serves again, and the two take turns."""
    roster = roster_with({10: 0, 20: 0}, partitions=1)
    served = []
    for failing in (10, 20, 10, 20):
        serving = roster.assign([10, 20]).serving[0]
        served.append(serving)
        assert serving == failing
        roster.failed(serving)
    assert served == [10, 20, 10, 20]
    roster.answered(10)
    assert roster.assign([10, 20]).serving[0] == 10 and roster.assign([10, 20]).serving[0] == 10
