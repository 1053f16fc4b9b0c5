"""Who serves which partition, when to ask a node who it is, and when a partition stops the run.

A worker's state (``Q_hat_m``, its version, ``theta_tilde``) belongs to its partition m. Nodes come and go: a
SuperNode restarts under a new id (or, with node authentication, the same id and an empty state, perhaps another
``partition-id``), two nodes can be started with the same ``partition-id``, a node can vanish and come back, a node
may run a ClientApp that cannot answer. Three plain bookkeepers (node ids are ints, partitions 0..M-1) decide:

:class:`Roster` -- identities and serving nodes.
    A node is *identified* when the server first sees its id, and again when a reply shows that what it said is
    stale (it answers for another partition): it says which partition it serves and the version and checksum of
    the state it holds (:class:`~laq_fl.protocol.NodeIdentity`). Every round each partition is *served* by one
    node (:meth:`Roster.assign`): a node that keeps answering keeps its partition; when the serving node is gone or
    its last contact failed, the newest other node claiming the partition that has not failed takes over (a
    restarted node is the newest), or, when every claimant's last contact failed, the one that failed longest ago
    (so two flaky nodes take turns); a partition nobody served yet goes to its first claimant. Every other node claiming a served partition
    is a *duplicate*: never contacted while the serving node answers, and named once in a warning.

:class:`Queries` -- when to ask a node who it is.
    A node is asked at most :data:`MAX_QUERY_ATTEMPTS` times: again after 1, 2, 4, ... rounds when it answers with
    an error (a ClientApp without laq-fl's query handler, a node config that cannot be read) or not at all within
    the wait (and, while the server waits for a node per partition before the first round, after 1, 2, 4, ...
    seconds); then the server gives up on it and names it, with its last error, when the run stops for want of a
    node. Queries never hold up a training round: they travel beside it and their answers are read when they come.

:class:`Contributions` -- when a partition counts as not contributing.
    A partition contributes in a round when its worker's reply is accepted (an upload or a skip). It fails when no
    node serves it, its reply is lost, an error or refused, or its worker said its state differs; a round the rule
    leaves it alone in (the ``ps`` rule) counts neither way. A partition that has failed for :data:`GRACE_ROUNDS`
    rounds in a row and at least ``node-wait-timeout`` seconds stops the run, naming it, its node and the last error:
    the run would otherwise train on part of the data. At the end of a run the time is waived: a partition failing
    for the last :data:`GRACE_ROUNDS` rounds, or one that never contributed, makes the run fail, not complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from laq_fl.protocol.records import NodeIdentity

GRACE_ROUNDS = 3
"""Consecutive rounds a partition may fail to contribute (with at least ``node-wait-timeout`` seconds) before the run
stops; a SuperNode restarted under its authenticated id reconnects only after the SuperLink dropped the old
connection, about 60 s."""

MAX_QUERY_ATTEMPTS = 5
"""How many times a node is asked which partition it serves before the server gives up on it."""

RETRY_SECONDS = 1.0
"""Before the first round, when rounds do not advance: the first wait before a node is asked again (it doubles)."""


@dataclass
class Assignment:
    """The outcome of :meth:`Roster.assign` for one round.

    Attributes
    ----------
    serving
        Partition -> the node to contact for it.
    taken_over
        ``(partition, previous node or None, new node)`` for every partition whose serving node changed: its
        worker state on the new node is whatever that node reported, so the server must check it.
    duplicates
        ``(node, partition, serving node)`` for nodes claiming a partition another node serves, first seen now.
    unserved
        Partitions no listed node claims.
    """

    serving: dict[int, int] = field(default_factory=dict)
    taken_over: list[tuple[int, int | None, int]] = field(default_factory=list)
    duplicates: list[tuple[int, int, int]] = field(default_factory=list)
    unserved: list[int] = field(default_factory=list)


class Roster:
    """The node <-> partition bookkeeping described in the module docstring, for ``num_partitions`` workers."""

    def __init__(self, num_partitions: int) -> None:
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        self.num_partitions = num_partitions
        self.identities: dict[int, NodeIdentity] = {}
        """Node id -> what it said when identified."""
        self.serving: dict[int, int] = {}
        """Partition -> the node that served it last."""
        self.failing: dict[int, int] = {}
        """Nodes whose last contact failed (no reply, an error, a rejected reply) -> when (a count of failures)."""
        self._failures = 0
        self._order: dict[int, int] = {}
        self._reported_duplicates: set[int] = set()
        self._replaced: set[int] = set()  # former serving nodes: a ghost of a restarted node, not a duplicate

    def unknown(self, listed: Iterable[int]) -> list[int]:
        """The listed nodes not identified, in id order."""
        return sorted(node for node in listed if node not in self.identities)

    def identify(self, node: int, identity: NodeIdentity) -> None:
        """Record what ``node`` said. Raises ``ValueError`` for a partition outside ``0..M-1``."""
        if not 0 <= identity.partition < self.num_partitions:
            raise ValueError(f"it serves partition {identity.partition}, outside 0..{self.num_partitions - 1}")
        self.identities[node] = identity
        self._order[node] = len(self._order)
        self._reported_duplicates.discard(node)

    def forget(self, node: int) -> None:
        """Identify ``node`` again when next seen (a reply showed that what it said is stale)."""
        self.identities.pop(node, None)
        self.failing.pop(node, None)

    def answered(self, node: int) -> None:
        self.failing.pop(node, None)

    def failed(self, node: int) -> None:
        self._failures += 1
        self.failing[node] = self._failures

    def claims(self, listed: Iterable[int]) -> dict[int, int]:
        """Node -> the partition it claims, for the listed identified nodes."""
        return {node: self.identities[node].partition for node in sorted(listed) if node in self.identities}

    def assign(self, listed: Iterable[int]) -> Assignment:
        """Choose the serving node of every partition among the ``listed`` (connected) identified nodes."""
        listed = set(listed)
        claimants: dict[int, list[int]] = {}
        for node in sorted(listed & set(self.identities), key=self._order.__getitem__):
            claimants.setdefault(self.identities[node].partition, []).append(node)
        outcome = Assignment()
        for partition in range(self.num_partitions):
            nodes = claimants.get(partition, [])
            holder = self.serving.get(partition)
            if not nodes:
                outcome.unserved.append(partition)
                continue
            if holder in nodes and holder not in self.failing:
                chosen = holder
            elif holder is None:
                chosen = nodes[0]
            else:
                others = [node for node in nodes if node != holder]
                healthy = [node for node in others if node not in self.failing]
                if healthy:
                    chosen = healthy[-1]
                elif others:  # every other claimant failed too: the one whose failure is oldest gets another try
                    chosen = min(others, key=self.failing.__getitem__)
                else:
                    chosen = holder
            if chosen != holder:
                outcome.taken_over.append((partition, holder, chosen))
                self.serving[partition] = chosen
                if holder is not None:
                    self._replaced.add(holder)
                self._replaced.discard(chosen)
            outcome.serving[partition] = chosen
            for node in nodes:
                if node != chosen and node not in self._reported_duplicates and node not in self._replaced:
                    self._reported_duplicates.add(node)
                    outcome.duplicates.append((node, partition, chosen))
        return outcome


@dataclass
class QueryRecord:
    """What the server knows of its questions to one unidentified node."""

    attempts: int = 0
    next_round: int = 0
    """The first round in which it may be asked again."""
    next_time: float = 0.0
    """Before the first round: when it may be asked again (seconds, the caller's clock)."""
    pending_since: float | None = None
    """When the outstanding question was sent (seconds, the caller's clock); ``None``: none outstanding."""
    last_error: str | None = None


class Queries:
    """When to ask an unidentified node which partition it serves (module docstring)."""

    def __init__(self, max_attempts: int = MAX_QUERY_ATTEMPTS) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.nodes: dict[int, QueryRecord] = {}

    def due(self, unknown: Iterable[int], server_round: int, now: float | None = None) -> list[int]:
        """The ``unknown`` nodes to ask now: never asked, or due again after an error, with attempts left. ``now``:
        the server is waiting before the first round, so the seconds since the last failure count, not rounds."""
        due = []
        for node in unknown:
            record = self.nodes.get(node)
            if record is None or (record.pending_since is None and record.attempts < self.max_attempts and (
                    record.next_round <= server_round or (now is not None and record.next_time <= now))):
                due.append(node)
        return due

    def asked(self, node: int, now: float) -> None:
        record = self.nodes.setdefault(node, QueryRecord())
        record.attempts += 1
        record.pending_since = now

    def pending(self, node: int) -> bool:
        record = self.nodes.get(node)
        return record is not None and record.pending_since is not None

    def expired(self, now: float, patience: float) -> list[int]:
        """The nodes whose outstanding question has waited ``patience`` seconds or more."""
        return sorted(node for node, record in self.nodes.items()
                      if record.pending_since is not None and now - record.pending_since >= patience)

    def failed(self, node: int, server_round: int, reason: str, now: float = 0.0) -> bool:
        """The question to ``node`` got an error or no answer (at ``now``): ask again after 1, 2, 4, ... rounds (or
        :data:`RETRY_SECONDS` times as many seconds before the first round). Returns True when that was its last
        attempt (the server gives up on it)."""
        record = self.nodes.setdefault(node, QueryRecord(attempts=1))
        record.pending_since = None
        record.last_error = reason
        record.next_round = server_round + 2 ** (record.attempts - 1)
        record.next_time = now + RETRY_SECONDS * 2 ** (record.attempts - 1)
        return record.attempts >= self.max_attempts

    def answered(self, node: int) -> None:
        """``node`` said who it is: forget the questions (a later re-identification starts afresh)."""
        self.nodes.pop(node, None)

    def errors(self, listed: Iterable[int]) -> dict[int, str]:
        """Node -> its last error, for the listed nodes that could not say who they are."""
        return {node: self.nodes[node].last_error for node in sorted(listed)
                if node in self.nodes and self.nodes[node].last_error is not None}


@dataclass
class Silence:
    """A partition's current run of rounds without contributing."""

    rounds: int = 0
    since: float = 0.0
    """When the run began (seconds, the caller's clock)."""
    node: int | None = None
    """The node that served it in the last failed round (``None``: none did)."""
    reason: str = ""
    """What went wrong last."""


class Contributions:
    """Which partitions are contributing to the lazy aggregate (module docstring), for ``num_partitions`` workers."""

    def __init__(self, num_partitions: int, grace_rounds: int = GRACE_ROUNDS) -> None:
        self.grace_rounds = grace_rounds
        self.silences: dict[int, Silence] = {}
        self.num_partitions = num_partitions

    def contributed(self, partition: int) -> None:
        self.silences.pop(partition, None)

    def failed(self, partition: int, now: float, node: int | None, reason: str) -> None:
        silence = self.silences.get(partition)
        if silence is None:
            silence = self.silences[partition] = Silence(since=now)
        silence.rounds += 1
        silence.node = node
        silence.reason = reason

    def stuck(self, now: float, min_seconds: float) -> list[int]:
        """Partitions silent for ``grace_rounds`` rounds and ``min_seconds`` seconds or more: the run must stop."""
        return sorted(partition for partition, silence in self.silences.items()
                      if silence.rounds >= self.grace_rounds and now - silence.since >= min_seconds)

    def missing_at_end(self, holding: Iterable[int]) -> list[int]:
        """At the end of the run: partitions silent for the last ``grace_rounds`` rounds, or that never contributed:
        not among ``holding``, the partitions whose copy the server holds (a resumed run's copies included)."""
        silent = {partition for partition, silence in self.silences.items() if silence.rounds >= self.grace_rounds}
        return sorted(silent | (set(range(self.num_partitions)) - set(holding)))

    def describe(self, partitions: Iterable[int]) -> str:
        """``partition P (node N): R rounds, last: REASON; ...`` for a stop message."""
        parts = []
        for partition in partitions:
            silence = self.silences.get(partition)
            if silence is None:
                parts.append(f"partition {partition}: no accepted reply in the whole run")
                continue
            node = "no node" if silence.node is None else f"node {silence.node}"
            parts.append(f"partition {partition} ({node}): {silence.rounds} round(s), last: {silence.reason}")
        return "; ".join(parts)


class Membership:
    """The three bookkeepers of one run, and the decisions a strategy asks of them: who serves each partition this
    round, which partitions have contributed nothing for too long, and what to say when the run must stop.

    Parameters
    ----------
    num_partitions
        M, the partitions 0..M-1.
    node_wait_timeout
        Seconds a partition may contribute nothing (besides :data:`GRACE_ROUNDS` rounds) before the run stops.
    """

    def __init__(self, num_partitions: int, node_wait_timeout: float) -> None:
        self.num_partitions = num_partitions
        self.node_wait_timeout = node_wait_timeout
        self.roster = Roster(num_partitions)
        self.queries = Queries()
        self.contributions = Contributions(num_partitions)

    def assign(self, listed: Iterable[int], now: float, count_unserved: bool = True) -> Assignment:
        """:meth:`Roster.assign`; a partition no node serves fails to contribute this round (unless
        ``count_unserved`` is false: the server is still waiting for the nodes before the first round)."""
        assignment = self.roster.assign(listed)
        if count_unserved:
            for partition in assignment.unserved:
                self.contributions.failed(partition, now, None, "no connected node serves it")
        return assignment

    def stuck(self, now: float) -> list[int]:
        """Partitions that have contributed nothing for the grace, in rounds and seconds: the run must stop."""
        return self.contributions.stuck(now, self.node_wait_timeout)

    def stop_reason(self, server_round: int, partitions: Sequence[int], listed: Iterable[int], how_long: str) -> str:
        """Why the run stops for ``partitions`` (no node serves them, or their nodes' replies fail): the partitions,
        the nodes connected and what they claim (two claiming one partition named), the nodes that could not say who
        they are and their errors, and what to do."""
        listed = sorted(listed)
        silences = self.contributions.silences
        unserved = [p for p in partitions if p not in silences or silences[p].node is None]
        failing = [p for p in partitions if p not in unserved]
        what = []
        if unserved:
            what.append(f"no connected node has served partition(s) {unserved} {how_long}")
        if failing:
            what.append(f"partition(s) {failing} contributed nothing {how_long} ({self.contributions.describe(failing)})")
        claims = self.roster.claims(listed)
        why = f"; the {len(listed)} node(s) connected serve {claims} (node: partition)"
        shared = sorted({partition for partition in claims.values() if list(claims.values()).count(partition) > 1})
        if shared:
            why += f"; partition(s) {shared} are claimed by more than one node (SuperNodes started with one partition-id?)"
        errors = self.queries.errors(listed)
        if errors:
            why += (f"; {len(errors)} node(s) answered the query 'which partition do you serve?' with an error: "
                    + "; ".join(f"node {node}: {reason}" for node, reason in errors.items()))
        waiting = [node for node in listed if self.queries.pending(node) and node not in errors]
        if waiting:
            why += f"; node(s) {waiting} have not answered that query yet"
        advice = []
        if unserved and errors:
            advice.append("make the nodes that answered with an error run laq-fl's ClientApp (client_app.py, or the "
                          "user's app with laq-fl's handlers)")
        if unserved:
            advice.append(f"start a SuperNode with --node-config \"partition-id=P num-partitions={self.num_partitions}\" "
                          "for each partition no node claims")
        if failing:
            advice.append("fix what makes the failing nodes' replies fail (each one's last error is named above)")
        return (f"round {server_round}: {' and '.join(what)} (node-wait-timeout = {self.node_wait_timeout:g} s), so the "
                f"run would train on part of the data{why}. To go on, {'; or '.join(advice)}")

    def end_reason(self, server_round: int, holding: Iterable[int]) -> str | None:
        """After the last round: why the run may not report ``completed`` (a partition failing for the last
        :data:`GRACE_ROUNDS` rounds, or one whose copy the server does not hold: not among ``holding``), or ``None``."""
        missing = self.contributions.missing_at_end(holding)
        if not missing:
            return None
        return (f"round {server_round}: the run ends while partition(s) {missing} did not contribute for the last "
                f"{self.contributions.grace_rounds} rounds or at all ({self.contributions.describe(missing)}), so its "
                "model is trained on part of the data; the run is not complete (its checkpoint can be resumed once "
                "those partitions' nodes work)")
