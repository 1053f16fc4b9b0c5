"""The LAQ family as one Flower strategy (Sun, Chen, Giannakis, Yang, NeurIPS 2019): Flower's hooks around the
protocol (:mod:`laq_fl.protocol`: records, verdicts, membership) and the server's math
(:class:`~laq_fl.server_state.ServerState`).

- ``configure_train`` reads the nodes' answers to earlier identification queries and asks the nodes it does not
  know (the queries travel beside the round: identification never holds it up), chooses one node per partition,
  stops the run when a partition has contributed nothing for too long, and builds one ``train`` message for each
  partition the rule's server half contacts.
- ``aggregate_train`` judges every reply once (:func:`~laq_fl.protocol.judge`), applies the verdicts in partition
  order, counts the round (:class:`~laq_fl.protocol.RoundStats`) and steps theta.
- :meth:`LaqStrategy.follow_up` is the one extra a loop may call between the two: it re-sends, with a restore,
  the message of every worker that said its state differs, so the round goes on as if nothing had happened. The
  ServerApp's loop (:func:`laq_fl.flower.serverapp.run_rounds`) calls it; Flower's own ``Strategy.start`` does not,
  and such a worker is then restored at its next contact.
- :meth:`LaqStrategy.check_complete`, after the last round, refuses to let a run end as if complete while a
  partition did not contribute. ``start`` is Flower's loop, told its last round and followed by this check.

Every member (GD ... LAQ, SGD ... SLAQ-WK2, EF-SignSGD, TernGrad, DGC) is this class with its
:class:`~laq_fl.config.AlgorithmConfig`; the minibatch members ask for seeded minibatch gradients. theta^0 comes
from the arrays of the first ``configure_train`` unless :attr:`LaqStrategy.state` was set (a resumed run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from laq_fl.config import AlgorithmConfig
from laq_fl.errors import NonFiniteError, PayloadError, RunStopped
from laq_fl.flower.identification import Identification, QueryTraffic
from laq_fl.flower.messages import read_train_reply, train_content
from laq_fl.flower.wire import WireMeter
from laq_fl.protocol import Expectation, Membership, Outcome, RoundStats, TrainReply, Verdict, judge
from laq_fl.server_state import ServerState

__all__ = ["MAX_FAILED_ROUNDS", "LaqStrategy", "RunStopped"]

MAX_FAILED_ROUNDS = 3
"""Consecutive rounds in which no contacted worker's reply was accepted before the run stops."""

POLL_SECONDS = 0.5
"""How often the server looks for nodes while it waits for one per partition before the first round."""


@dataclass
class _Judged:
    """One reply, judged once (``follow_up`` and ``aggregate_train`` share it)."""

    reply: Message
    verdict: Verdict
    parsed: TrainReply | None = None
    new_copy: np.ndarray | None = None
    payload_bits: int = 0


class _ServerChecksums:
    """:class:`~laq_fl.protocol.Checksums` for one partition; keeps the copy an upload decodes to."""

    def __init__(self, state: ServerState, partition: int) -> None:
        self.state, self.partition, self.new_copy = state, partition, None

    def of_upload(self, payload: bytes) -> int:
        self.new_copy = self.state.decode(self.partition, payload)
        return self.state.upload_checksum(self.new_copy)

    def held(self) -> int:
        return self.state.checksum(self.partition)


@dataclass
class _Round:
    """What one round sent and received, from ``configure_train`` to ``aggregate_train``."""

    number: int
    report: bool
    meter: WireMeter
    stats: RoundStats
    serving: dict[int, int] = field(default_factory=dict)
    sent: dict[int, Message] = field(default_factory=dict)
    expected: dict[int, Expectation] = field(default_factory=dict)
    not_contacted: list[int] = field(default_factory=list)
    judged: dict[int, _Judged] = field(default_factory=dict)
    superseded: list[Message] = field(default_factory=list)
    superseded_uplink: int = 0
    traffic: QueryTraffic = field(default_factory=QueryTraffic)
    full_theta: ArrayRecord | None = None


@dataclass
class _Triage:
    """Round ``number``'s replies sorted by their verdict."""

    number: int
    accepted: dict[int, _Judged] = field(default_factory=dict)
    differs: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    """Partitions sent a message whose reply was lost or refused."""
    answered: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)
    reidentify: list[int] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    uplink_bytes: int = 0

    def refuse(self, partition: int | None, node: int, reason: str) -> None:
        """Log and count a refused reply (every one is named, with its node and reason)."""
        where = "" if partition is None else f" (partition {partition})"
        log(WARNING, "Round %d: refused a reply of node %d%s: %s", self.number, node, where, reason)
        self.refusals.append(f"node {node}{where}: {reason}")
        if partition is not None:
            self.reasons.setdefault(partition, reason)  # the first reason: a duplicate does not hide it


class LaqStrategy(Strategy):
    """Lazily aggregated, compressed gradient descent for any member of the family.

    Parameters
    ----------
    config
        The algorithm's settings (``algorithm``, ``bits``, ``lr``, ``xi``, ``t_bar``, ``batch_size``, ``density``).
    num_workers
        M in rule (7a): the partitions 0..M-1, one worker each.
    report_every
        Every how many rounds each contacted worker reports its loss and state checksum even when it skips
        (round 1, then every ``report_every``-th, and the last); 0: only uploads carry them.
    node_wait_timeout
        Seconds to wait before the first round for a node to serve every partition, and the least time a partition
        may contribute nothing mid-run (with :data:`~laq_fl.protocol.GRACE_ROUNDS` rounds) before the run stops.
    num_rounds
        The last round, when known (the ServerApp's loop sets it): it is a report round, and the run fails rather
        than completes if a partition did not contribute by then.
    round_timeout
        Seconds a round waits for replies; an identification query unanswered that long counts as a failed attempt.

    Attributes
    ----------
    state
        The :class:`~laq_fl.server_state.ServerState`; ``None`` until the first ``configure_train`` gives it theta^0
        (or the ServerApp restores it from a checkpoint).
    membership
        The protocol's membership decisions (:class:`~laq_fl.protocol.Membership`: roster, queries, contributions).
    identification
        The queries that ask nodes which partition they serve (:class:`~laq_fl.flower.identification.Identification`).
    round_stats
        Round -> its :class:`~laq_fl.protocol.RoundStats` (what ``aggregate_train`` also returns as metrics).

    Raises
    ------
    RunStopped
        From ``configure_train`` before the first round when a node's config does not fit the run (named, before any
        training message) or a partition has no node after ``node_wait_timeout``, and in any round when a partition
        has contributed nothing for ``GRACE_ROUNDS`` rounds and ``node_wait_timeout`` seconds; from
        ``aggregate_train`` when no reply was accepted in ``MAX_FAILED_ROUNDS`` consecutive rounds or theta^{k+1} is
        not finite; from :meth:`check_complete` (and ``start``) when the last round ends while a partition has not
        contributed for ``GRACE_ROUNDS`` rounds, or never did.
    """

    def __init__(self, config: AlgorithmConfig, num_workers: int, report_every: int = 10,
                 node_wait_timeout: float = 120.0, *, num_rounds: int | None = None,
                 round_timeout: float = 600.0) -> None:
        if not isinstance(config, AlgorithmConfig):
            raise TypeError(f"LaqStrategy needs a laq_fl.config.AlgorithmConfig, got {type(config).__name__}")
        if isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 0:
            raise ValueError(f"report_every must be an integer >= 0, got {report_every!r}")
        self.config = config
        self.num_workers = num_workers
        self.report_every = report_every
        self.num_rounds = num_rounds
        self.state: ServerState | None = None
        self.membership = Membership(num_workers, node_wait_timeout)
        self.identification = Identification(self.membership, round_timeout)
        self.round_stats: dict[int, RoundStats] = {}
        self._round: _Round | None = None
        self._first_round = True
        self._failed_rounds = 0

    @property
    def node_wait_timeout(self) -> float:
        """Seconds (held once, by the membership, which decides the stops with it)."""
        return self.membership.node_wait_timeout

    @node_wait_timeout.setter
    def node_wait_timeout(self, seconds: float) -> None:
        self.membership.node_wait_timeout = seconds

    @property
    def round_timeout(self) -> float:
        """Seconds (held once, by the identification, which gives up on unanswered queries after it)."""
        return self.identification.round_timeout

    @round_timeout.setter
    def round_timeout(self, seconds: float) -> None:
        self.identification.round_timeout = seconds

    @property
    def batch_size(self) -> int:
        """0 asks workers for full local gradients."""
        return self.config.batch_size if self.config.spec.minibatch else 0

    def reports_in(self, server_round: int) -> bool:
        """Whether every contacted worker reports its loss and checksum in ``server_round``."""
        if self.report_every == 0:
            return False
        return (server_round - 1) % self.report_every == 0 or server_round == self.num_rounds

    def _state_from(self, arrays: ArrayRecord) -> ServerState:
        tensors = arrays.to_numpy_ndarrays()
        if len(tensors) != 1 or tensors[0].ndim != 1:
            raise ValueError(f"theta^0 must be one flat array, got shapes {[t.shape for t in tensors]}")
        return ServerState(tensors[0], self.config, self.num_workers)

    def summary(self) -> None:
        config = self.config
        log(
            INFO,
            "\t%s: algorithm=%s compressor=%s memory=%s rule=%s lr=%s D=%d sum(xi)=%.3g t_bar=%d batch=%s M=%d "
            "downlink=%s",
            type(self).__name__,
            config.algorithm,
            (self.state.compressor if self.state else config.compressor()).spec(),
            config.memory.name,
            config.spec.rule,
            config.lr,
            config.num_differences,
            sum(config.xi),
            config.t_bar,
            self.batch_size or "full",
            self.num_workers,
            config.downlink_compressor().spec() if config.two_way else "theta in full",
        )

    # ------------------------------------------------------------------ membership

    def _assign(self, server_round: int, grid: Grid, work: _Round) -> dict[int, int]:
        """Partition -> node for this round; checks the state of nodes taking a partition over; stops the run when a
        partition has had no node before the first round, or has contributed nothing for too long."""
        membership = self.membership
        self.identification.poll(server_round, grid, work.meter, work.traffic, starting=self._first_round)
        assignment = membership.assign(grid.get_node_ids(), time.monotonic(), count_unserved=not self._first_round)
        if self._first_round:
            deadline = time.monotonic() + self.node_wait_timeout
            while assignment.unserved and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)  # before the first round, wait for a node for every partition
                self.identification.poll(server_round, grid, work.meter, work.traffic, starting=True, waiting=True)
                assignment = membership.assign(grid.get_node_ids(), time.monotonic(), count_unserved=False)
            if assignment.unserved:
                raise RunStopped(membership.stop_reason(server_round, assignment.unserved, grid.get_node_ids(),
                                                        "before the first round"))
            self._first_round = False
        for partition, previous, node in assignment.taken_over:
            if previous is not None:
                log(INFO, "Round %d: node %d takes partition %d over from node %d", server_round, node, partition, previous)
            self.state.taken_over(partition, membership.roster.identities[node])
        for node, partition, serving in assignment.duplicates:
            log(WARNING, "Round %d: node %d also claims partition %d, which node %d serves: ignoring node %d "
                "(two SuperNodes started with the same partition-id?)", server_round, node, partition, serving, node)
        work.stats.duplicates = len(assignment.duplicates)
        work.stats.unserved = len(assignment.unserved)
        if assignment.unserved:
            log(WARNING, "Round %d: no connected node serves partition(s) %s; their stale copies stay in the aggregate",
                server_round, assignment.unserved)
        stuck = membership.stuck(time.monotonic())
        if stuck:
            raise RunStopped(membership.stop_reason(server_round, stuck, grid.get_node_ids(),
                                                    f"for {membership.contributions.grace_rounds} rounds or more"))
        return assignment.serving

    # ------------------------------------------------------------------ rounds

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """theta^k with its instruction to the node serving each partition the rule's server half contacts."""
        if self.state is None:  # theta^0 is the arrays passed in, unless a resumed run restored the state
            self.state = self._state_from(arrays)
        work = self._round = _Round(server_round, self.reports_in(server_round), WireMeter(), RoundStats())
        work.serving = self._assign(server_round, grid, work)
        work.not_contacted = [p for p in range(self.num_workers) if p not in work.serving]
        for partition, node in sorted(work.serving.items()):
            message = self._message_for(work, partition, node)
            if message is None:
                work.not_contacted.append(partition)
            else:
                work.sent[partition] = message
        return list(work.sent.values())

    def _message_for(self, work: _Round, partition: int, node: int) -> Message | None:
        """The train message for ``partition``'s worker on ``node`` (and what its reply must be), or ``None`` when the
        rule does not contact it."""
        state = self.state
        instruction = state.instruction(partition)
        if instruction is None:
            return None
        restore = state.restore(partition)
        work.stats.restores += restore is not None
        broadcast = state.broadcast(partition)
        downlink = None if state.downlink is None else state.downlink.compressor
        if broadcast.full and work.full_theta is None:
            work.full_theta = ArrayRecord([broadcast.theta])  # one record: its objects are shared by all messages
        work.stats.full_broadcasts += broadcast.full and downlink is not None
        work.stats.downlink_payload_bits += broadcast.payload_bits(downlink, state.size)
        work.expected[partition] = Expectation(partition, state.expected_version(partition, upload=False),
                                               instruction.force_upload, instruction.reset, work.report)
        content = train_content(work.full_theta if broadcast.full else None, broadcast, downlink, work.number - 1,
                                state.compressor, state.memory.name, self.config.spec.rule, self.batch_size,
                                instruction, work.report, state.record(partition).version, restore)
        return Message(content, node, MessageType.TRAIN, group_id=str(work.number))

    def _judge(self, work: _Round, partition: int, reply: Message) -> _Judged:
        """``reply`` (to ``partition``'s message) decoded and judged, once per reply."""
        cached = work.judged.get(id(reply))
        if cached is not None and cached.reply is reply:
            return cached
        if reply.has_error():
            judged = _Judged(reply, Verdict.refused(f"error reply: {reply.error.reason}"))
        else:
            try:
                parsed = read_train_reply(reply)
            except PayloadError as error:
                judged = _Judged(reply, Verdict.refused(str(error)))
            else:
                checksums = _ServerChecksums(self.state, partition)
                verdict = judge(parsed, work.expected[partition], checksums)
                bits = self.state.payload_bits(parsed.payload) if verdict.outcome is Outcome.UPLOAD else 0
                judged = _Judged(reply, verdict, parsed, checksums.new_copy, bits)
        work.judged[id(reply)] = judged
        return judged

    def follow_up(self, server_round: int, replies: list[Message]) -> tuple[list[Message], list[Message]]:
        """Within the round, answer every worker that said its state differs (it restarted under the same node id
        with an empty state) with its message again plus a restore, so the round goes on as if nothing happened.

        Returns the replies to keep and the messages to send; the caller adds their replies and then calls
        :meth:`aggregate_train`. Every other reply is kept, judged already, for ``aggregate_train``.
        """
        work = self._round
        by_message = {message.metadata.message_id: p for p, message in work.sent.items()}
        keep, again, resent = [], [], set()
        for reply in replies:
            partition = by_message.get(reply.metadata.reply_to_message_id)
            if partition is None or partition in resent or \
                    self._judge(work, partition, reply).verdict.outcome is not Outcome.STATE_DIFFERS:
                keep.append(reply)
                continue
            node = work.sent[partition].metadata.dst_node_id
            log(INFO, "Round %d: the worker of partition %d (node %d) lost its state: restoring it now", server_round,
                partition, node)
            work.superseded.append(work.sent.pop(partition))
            work.superseded_uplink += work.meter.uplink_bytes(reply)
            resent.add(partition)
            self.state.state_differs(partition)
            message = self._message_for(work, partition, node)
            if message is None:  # the rule no longer contacts it: its stale copy stays, as for any worker left alone
                work.not_contacted.append(partition)
                continue
            work.sent[partition] = message
            again.append(message)
        return keep, again

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge all replies, apply the verdicts in partition order, count the round, then step theta."""
        work = self._round
        triage = self._triage(work, replies)
        self._failed_rounds = self._failed_rounds + 1 if work.sent and not triage.accepted and not triage.differs else 0
        if self._failed_rounds >= MAX_FAILED_ROUNDS:
            raise RunStopped(
                f"round {server_round}: no reply was accepted in {self._failed_rounds} consecutive rounds, so the run "
                f"cannot make progress; {len(triage.refusals)} of {len(work.sent)} replies were refused, e.g. "
                + "; ".join(triage.refusals[:3] or [f"no node replied within round-timeout ({self.round_timeout:g} s)"])
            )
        self._apply(work, triage)
        stats = self._count(work, triage)
        self.round_stats[server_round] = stats
        try:
            self.state.step()
        except NonFiniteError as error:
            raise RunStopped(f"round {server_round}: {error}") from error
        # The model everyone holds: theta^{k+1}, or theta_tilde^{k+1} with two-way broadcasts.
        return ArrayRecord([self.state.iterate]), MetricRecord(stats.metrics())

    def _triage(self, work: _Round, replies: Iterable[Message]) -> _Triage:
        """Each reply to its partition's message, judged once; unsolicited and second replies refused."""
        triage = _Triage(work.number)
        partition_of_message = {message.metadata.message_id: p for p, message in work.sent.items()}
        for reply in replies:
            partition = partition_of_message.get(reply.metadata.reply_to_message_id)
            source = reply.metadata.src_node_id
            if partition is None:
                triage.refuse(None, source, "it answers no message of this round")
                continue
            node = work.sent[partition].metadata.dst_node_id
            if partition in triage.answered:
                triage.refuse(partition, source, "a second reply to one message")
                continue
            triage.answered.add(partition)
            if source == node:  # SuperLink-made error replies never crossed the uplink
                triage.uplink_bytes += work.meter.uplink_bytes(reply)
            judged = self._judge(work, partition, reply)
            if judged.verdict.outcome is Outcome.REFUSED:
                triage.refuse(partition, node, judged.verdict.reason)
                if judged.verdict.reidentify:
                    triage.reidentify.append(node)
            elif judged.verdict.outcome is Outcome.STATE_DIFFERS:
                triage.differs.append(partition)
                log(INFO, "Round %d: the worker of partition %d (node %d) holds state version %d, the server %d: "
                    "restoring it next round", work.number, partition, node, judged.parsed.version,
                    self.state.record(partition).version)
            else:
                triage.accepted[partition] = judged
        triage.missing = [p for p in work.sent if p not in triage.accepted and p not in triage.differs]
        return triage

    def _apply(self, work: _Round, triage: _Triage) -> None:
        """The verdicts, in partition order (as the in-process driver: the float64 aggregate matches it bit for bit),
        to the server's state and the membership's records."""
        state, roster, contributions, now = self.state, self.membership.roster, self.membership.contributions, time.monotonic()
        for partition, judged in sorted(triage.accepted.items()):
            state.delivered(partition)
            roster.answered(work.serving[partition])
            contributions.contributed(partition)
            if judged.new_copy is None:
                state.skip(partition)
            else:
                state.commit(partition, judged.new_copy, judged.parsed.error_sq or 0.0)
        for partition in work.not_contacted:
            state.skip(partition)
        for partition in triage.differs:
            roster.answered(work.serving[partition])
            state.skip(partition)
            state.state_differs(partition)
            contributions.failed(partition, now, work.serving[partition],
                                 "its state differs from the server's (restored at its next contact)")
        for partition in triage.missing:
            state.lost(partition)
            roster.failed(work.serving[partition])
            contributions.failed(partition, now, work.serving[partition], triage.reasons.get(
                partition, f"no reply within round-timeout ({self.round_timeout:g} s)"))
        for node in triage.reidentify:  # what the roster knew of it is stale: ask it again next round
            roster.forget(node)

    def _count(self, work: _Round, triage: _Triage) -> RoundStats:
        stats, accepted = work.stats, triage.accepted
        stats.rejected = len(triage.refusals)
        stats.lost = len([p for p in triage.missing if p not in triage.answered])
        if stats.lost:
            log(WARNING, "Round %d: %d worker(s) did not reply; their stale copies stay in the aggregate", work.number,
                stats.lost)
        losses = [judged.parsed.loss for _, judged in sorted(accepted.items()) if judged.parsed.loss is not None]
        stats.uploads = sum(judged.new_copy is not None for judged in accepted.values())
        stats.skips = len(accepted) - stats.uploads
        stats.resyncs = stats.loss_missing = len(triage.missing) + len(triage.differs)
        stats.not_contacted = len(work.not_contacted)
        stats.payload_bits = sum(judged.payload_bits for judged in accepted.values())
        stats.identified = work.traffic.identified
        stats.uplink_bytes = triage.uplink_bytes + work.traffic.uplink_bytes + work.superseded_uplink
        stats.downlink_bytes = sum(work.meter.downlink_bytes(message) for message in
                                   [*work.sent.values(), *work.superseded]) + work.traffic.downlink_bytes
        stats.identify_bytes = work.traffic.uplink_bytes + work.traffic.downlink_bytes
        stats.train_loss = float(np.mean(losses)) if losses else float("nan")  # partition order, as the driver
        stats.loss_reports = len(losses)
        return stats

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's own loop (``Strategy.start``, unchanged), told its last round: that round is a report round, and
        after it :meth:`check_complete` raises if a partition did not contribute."""
        self.num_rounds = num_rounds
        result = super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn)
        self.check_complete()
        return result

    def check_complete(self) -> None:
        """After the last round: raise :class:`RunStopped` when a partition did not contribute for the last
        ``GRACE_ROUNDS`` rounds, or the server holds no copy of it (it never contributed): the run must not report
        ``completed`` with a model trained on part of the data."""
        last = max(self.round_stats, default=0)
        holding = self.state.copies if self.state is not None else ()
        incomplete = self.membership.end_reason(last, holding)
        if incomplete:
            raise RunStopped(incomplete)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the ServerApp evaluates theta centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
