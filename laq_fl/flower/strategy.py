"""The LAQ family as one Flower strategy (Sun, Chen, Giannakis, Yang, NeurIPS 2019).

One round of Algorithm 2 per Flower round:

1. ``configure_train`` first identifies every node it has not seen (a ``query`` message: which partition it
   serves, the version and checksum of its state; :mod:`laq_fl.membership`), chooses one node per partition, and
   asks the rule's server half what each partition's worker gets: the broadcast (theta^k, or with two-way
   broadcasts the innovations of theta_tilde that worker is missing, or theta_tilde in full) with the shared
   threshold, the forced-upload flag (7b, first upload), the reset flag, the worker's version as the server
   counts it and, when the server knows the worker holds another state, a restore of its copy; or no message.
2. Workers reply with an upload (the compressor's payload, with their loss, version, checksum and
   ``||eps_hat||^2``) or an empty skip; in report rounds (every ``report_every``) every contacted worker adds its
   loss, version and checksum; a worker whose version is not the server's says so instead of computing.
3. ``aggregate_train`` sorts replies into uploads, skips and refusals, validates every upload before
   applying any, folds uploads into the per-partition copies and the lazy aggregate in partition order, keeps
   stale copies for skips, lost and refused replies, and steps ``theta^{k+1} = theta^k - alpha nabla^k`` (4).

State identity and resync (the protocol; the README's "Failure handling" says the same for users). Worker state
belongs to a partition, never to a node id. The server resynchronises a partition's worker when it cannot be sure
the worker holds what the server holds:

- reply lost, an error reply, or a reply refused as malformed (bad record, version or checksum): the worker may
  have moved its ``Q_hat``; next contact is a forced *reset* upload from ``Q_hat = 0`` (and, two-way, the full
  ``theta_tilde``).
- the worker says its version differs (it restarted with an empty state, or the run resumed from a checkpoint),
  or a new node takes the partition over and its identity does not match: the worker did not move; next contact
  *restores* the server's copy, version, ``||eps_hat||^2`` and ``theta_hat`` (:class:`~laq_fl.server_state.Restore`)
  and the iteration goes on exactly as if nothing had happened (error-feedback residuals excepted: the server
  never sees them).

Every member (GD ... LAQ, SGD ... SLAQ-WK2, EF-SignSGD, TernGrad, DGC) is this class with its
:class:`~laq_fl.config.AlgorithmConfig`; the minibatch members ask for seeded minibatch gradients.
theta^0 comes from ``start(grid, initial_arrays)``, the one source of the starting point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from laq_fl.codec import PayloadError
from laq_fl.compressors import NonFiniteError
from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import state_checksum
from laq_fl.flower.messages import NodeConfigError, identify_content, read_identity, read_train_reply, train_content
from laq_fl.flower.wire import WireMeter
from laq_fl.membership import Roster
from laq_fl.server_state import ServerState
from laq_fl.skip_rules import needs_resync

MAX_FAILED_ROUNDS = 3
"""Consecutive rounds in which no contacted worker's reply was accepted before the run stops."""

MAX_UNSERVED_ROUNDS = 3
"""Consecutive rounds a partition may go without any connected node serving it before the run stops (and at least
``node_wait_timeout`` seconds: a SuperNode restarted under its authenticated id can only reconnect once the
SuperLink dropped the old connection, about 60 s)."""


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why (the round, the nodes, the errors) and what to check."""


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
        may go unserved mid-run (with ``MAX_UNSERVED_ROUNDS`` rounds) before the run stops.

    Attributes
    ----------
    state
        The :class:`~laq_fl.server_state.ServerState` (theta, lazy aggregate, per-partition copies and clocks);
        ``None`` until ``start`` (or the first ``configure_train``) gives it theta^0.
    roster
        Which node serves which partition (:class:`~laq_fl.membership.Roster`).
    round_metrics
        Per round: uploads, skips, rejected (replies refused: errors, malformed, unsolicited, duplicate), lost
        (contacted workers whose reply never came), resyncs (workers reset or restored next round), restores
        (restores sent this round), not-contacted, identified, duplicates, unserved, full-broadcasts, payload-bits,
        downlink-payload-bits, uplink-bytes, downlink-bytes (identification messages included, and counted alone
        in identify-bytes), train-loss (the
        mean of the losses accepted), loss-reports (how many) and loss-missing (contacted workers whose loss is
        not in the mean: reply lost or refused).

    Raises
    ------
    RunStopped
        From ``configure_train`` when a node's config does not fit the run (named, before any training message
        of that round), when a partition has no node before the first round (after ``node_wait_timeout``), or
        has had none for ``MAX_UNSERVED_ROUNDS`` rounds and ``node_wait_timeout`` seconds; from ``aggregate_train``
        when no reply was accepted in ``MAX_FAILED_ROUNDS`` consecutive rounds or theta^{k+1} is not finite.
    """

    def __init__(self, config: AlgorithmConfig, num_workers: int, report_every: int = 10,
                 node_wait_timeout: float = 0.0) -> None:
        if isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 0:
            raise ValueError(f"report_every must be an integer >= 0, got {report_every!r}")
        self.config = config
        self.num_workers = num_workers
        self.report_every = report_every
        self.node_wait_timeout = node_wait_timeout
        self.num_rounds: int | None = None
        self._unserved_since: dict[int, float] = {}
        self._first_configure = True
        self.timeout = 600.0
        self.state: ServerState | None = None
        self.roster = Roster(num_workers)
        self.round_metrics: dict[int, dict[str, float | int]] = {}
        self._sent: dict[int, Message] = {}
        self._serving: dict[int, int] = {}
        self._restores = 0
        self._report = False
        self._full_broadcasts = 0
        self._downlink_bits = 0
        self._forced: set[int] = set()
        self._not_contacted: list[int] = []
        self._failed_rounds = 0
        self._membership: dict[str, int] = {}
        self._meter = WireMeter()
        self._full_theta: ArrayRecord | None = None
        self._superseded: list[Message] = []
        self._superseded_uplink = 0

    @property
    def batch_size(self) -> int:
        """0 asks workers for full local gradients."""
        return self.config.batch_size if self.config.spec.minibatch else 0

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 600.0,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
        on_round_end: Callable[[int], None] | None = None,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` from theta = ``initial_arrays`` (one flat float array).

        As ``Strategy.start`` (no federated evaluation: ``evaluate_fn`` evaluates centrally, round 0 included when
        ``first_round`` is 1), plus ``first_round`` > 1 to continue a resumed run whose :attr:`state` the caller
        restored, and ``on_round_end(round)`` after each round's evaluation (the ServerApp checkpoints there).
        """
        if first_round == 1 or self.state is None:
            self.state = self._state_from(initial_arrays)
        self.round_metrics = {}
        self.roster = Roster(self.num_workers)
        self._failed_rounds = 0
        self._unserved_since = {}
        self._first_configure = True
        self.num_rounds = num_rounds
        self.timeout = timeout
        log(INFO, "Starting %s strategy: rounds %d..%d", type(self).__name__, first_round, num_rounds)
        self.summary()
        result = Result()
        arrays = ArrayRecord([self.state.iterate]) if first_round > 1 else initial_arrays
        result.arrays = arrays  # a resumed run with no round left returns the checkpoint's model
        if evaluate_fn is not None and first_round == 1:
            metrics = evaluate_fn(0, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[0] = metrics
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            replies = list(grid.send_and_receive(self.configure_train(server_round, arrays, ConfigRecord(), grid),
                                                 timeout=timeout))
            replies, again = self.follow_up(server_round, replies)
            if again:
                replies += list(grid.send_and_receive(again, timeout=timeout))
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = metrics
            if on_round_end is not None:
                on_round_end(server_round)
        return result

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

    def _identify(self, server_round: int, grid: Grid, meter: WireMeter, keep_counts: bool = False) -> None:
        """Ask every node not seen before which partition it serves (one ``query`` round trip, only when there is one).

        Raises :class:`RunStopped` naming every node whose node config does not fit the run.
        """
        listed = list(grid.get_node_ids())
        unknown = self.roster.unknown(listed)
        if not keep_counts:
            self._membership = {"identified": 0, "duplicates": 0, "unserved": 0, "identify-uplink-bytes": 0,
                                "identify-downlink-bytes": 0}
        if not unknown:
            return
        queries = [Message(identify_content(), node, MessageType.QUERY, group_id=f"{server_round}-identify")
                   for node in unknown]
        self._membership["identify-downlink-bytes"] += sum(meter.downlink_bytes(query) for query in queries)
        replies = list(grid.send_and_receive(queries, timeout=self.timeout))
        config_errors = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in unknown:
                log(WARNING, "Round %d: ignoring an identity from node %d, which was not asked", server_round, node)
                continue
            self._membership["identify-uplink-bytes"] += meter.uplink_bytes(reply)
            if reply.has_error():
                log(WARNING, "Round %d: node %d could not say which partition it serves (%s); asking again next round",
                    server_round, node, reply.error.reason)
                continue
            try:
                identity = read_identity(reply)
                self.roster.identify(node, identity)
            except (NodeConfigError, ValueError) as error:  # PayloadError is a ValueError too: a node that
                config_errors.append(f"node {node}: {error}")  # answers nonsense to identify is misconfigured
                continue
            self._membership["identified"] += 1
            log(INFO, "Round %d: node %d serves partition %d (state version %d)", server_round, node,
                identity.partition, identity.version)
        if config_errors:
            raise RunStopped(
                f"round {server_round}: {len(config_errors)} node(s) do not fit this run "
                f"({len(listed)} node(s) connected for num-clients={self.num_workers}); fix their --node-config "
                "(partition-id in 0..num-clients-1, num-partitions = num-clients) or the run config: "
                + "; ".join(config_errors)
            )

    def _assign(self, server_round: int, grid: Grid) -> dict[int, int]:
        """Partition -> node for this round; checks the state of nodes taking a partition over; stops the run
        when a partition has had no node too long."""
        state = self.state
        assignment = self.roster.assign(grid.get_node_ids())
        deadline = time.monotonic() + self.node_wait_timeout
        while self._first_configure and assignment.unserved and time.monotonic() < deadline:
            time.sleep(0.5)  # before the first round, wait for a node for every partition
            self._identify(server_round, grid, self._meter, keep_counts=True)
            assignment = self.roster.assign(grid.get_node_ids())
        if self._first_configure and assignment.unserved:
            self._stop_unserved(server_round, grid, assignment.unserved, "before the first round")
        self._first_configure = False
        now = time.monotonic()
        for partition in range(self.num_workers):
            if partition in assignment.unserved:
                self._unserved_since.setdefault(partition, now)
            else:
                self._unserved_since.pop(partition, None)
        for partition, previous, node in assignment.taken_over:
            identity = self.roster.identities[node]
            if previous is not None:
                log(INFO, "Round %d: node %d takes partition %d over from node %d", server_round, node, partition, previous)
            server_side = (state.versions.get(partition), state.checksum(partition))
            if partition in state.copies and (identity.version, identity.checksum) != server_side:
                state.state_differs(partition)  # restore the server's copy with the next message
            else:
                state.theta_versions.pop(partition, None)  # its theta_tilde version is unknown: send it in full
        for node, partition, serving in assignment.duplicates:
            log(WARNING, "Round %d: node %d also claims partition %d, which node %d serves: ignoring node %d "
                "(two SuperNodes started with the same partition-id?)", server_round, node, partition, serving, node)
        self._membership["duplicates"] = len(assignment.duplicates)
        self._membership["unserved"] = len(assignment.unserved)
        if assignment.unserved:
            log(WARNING, "Round %d: no connected node serves partition(s) %s; their stale copies stay in the aggregate",
                server_round, assignment.unserved)
        stuck = sorted(
            p for p in assignment.unserved
            if self.roster.unserved_rounds[p] >= MAX_UNSERVED_ROUNDS and now - self._unserved_since[p] >= self.node_wait_timeout
        )
        if stuck:
            self._stop_unserved(server_round, grid, stuck, f"for {MAX_UNSERVED_ROUNDS} rounds")
        return assignment.serving

    def _stop_unserved(self, server_round: int, grid: Grid, partitions: list[int], how_long: str) -> None:
        listed = set(grid.get_node_ids())
        claims = {node: identity.partition for node, identity in self.roster.identities.items() if node in listed}
        raise RunStopped(
            f"round {server_round}: no connected node has served partition(s) {partitions} {how_long} "
            f"(node-wait-timeout = {self.node_wait_timeout:g} s), so the run would train on part of the data; the "
            f"{len(listed)} node(s) connected serve {dict(sorted(claims.items()))} (node: partition). Start a "
            f"SuperNode with --node-config \"partition-id=P num-partitions={self.num_workers}\" for each missing P"
        )

    # ------------------------------------------------------------------ rounds

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """theta^k with its instruction to the node serving each partition the rule's server half contacts."""
        if self.state is None:  # hooks called without start(): theta^0 is the arrays passed in
            self.state = self._state_from(arrays)
        self._meter = WireMeter()
        self._identify(server_round, grid, self._meter)
        self._serving = self._assign(server_round, grid)
        self._full_theta = None  # one record, built when first needed: its objects are shared by all messages
        self._sent = {}
        self._superseded: list[Message] = []
        self._superseded_uplink = 0
        self._forced = set()
        self._not_contacted = [p for p in range(self.num_workers) if p not in self._serving]
        self._report = self.reports_in(server_round)
        self._full_broadcasts = 0
        self._downlink_bits = 0
        self._restores = 0
        for partition, node in sorted(self._serving.items()):
            message = self._message_for(server_round, partition, node)
            if message is None:
                self._not_contacted.append(partition)
            else:
                self._sent[partition] = message
        return list(self._sent.values())

    def _message_for(self, server_round: int, partition: int, node: int) -> Message | None:
        """The train message for ``partition``'s worker on ``node``, or ``None`` when the rule does not contact it."""
        state = self.state
        instruction = state.instruction(partition)
        if instruction is None:
            return None
        if instruction.force_upload:
            self._forced.add(partition)
        restore = state.restore(partition)
        self._restores += restore is not None
        broadcast = state.broadcast(partition)
        downlink = None if state.downlink is None else state.downlink.compressor
        if broadcast.full and self._full_theta is None:
            self._full_theta = ArrayRecord([broadcast.theta])
        self._full_broadcasts += broadcast.full and downlink is not None
        self._downlink_bits += broadcast.payload_bits(downlink, state.size)
        content = train_content(self._full_theta if broadcast.full else None, broadcast, downlink, server_round - 1,
                                state.compressor, state.memory.name, self.config.spec.rule, self.batch_size,
                                instruction, self._report, state.versions.get(partition, 0), restore)
        return Message(content, node, MessageType.TRAIN, group_id=str(server_round))

    def follow_up(self, server_round: int, replies: list[Message]) -> tuple[list[Message], list[Message]]:
        """Within the round, answer every worker that said its state differs (it restarted under the same node id
        with an empty state) with its message again plus a restore, so the round goes on as if nothing happened.

        Returns the replies to keep and the messages to send; the caller adds their replies and then calls
        :meth:`aggregate_train`. A reply that is not a valid "state differs" is kept for ``aggregate_train`` to judge.
        """
        state = self.state
        by_message = {message.metadata.message_id: p for p, message in self._sent.items()}
        keep, again = [], []
        for reply in replies:
            partition = by_message.get(reply.metadata.reply_to_message_id)
            if partition is None or reply.has_error() or not self._says_state_differs(partition, reply):
                keep.append(reply)
                continue
            log(INFO, "Round %d: the worker of partition %d (node %d) lost its state: restoring it now", server_round,
                partition, reply.metadata.src_node_id)
            self._superseded.append(self._sent[partition])
            self._superseded_uplink += self._meter.uplink_bytes(reply)
            state.state_differs(partition)
            message = self._message_for(server_round, partition, self._sent[partition].metadata.dst_node_id)
            self._sent[partition] = message
            again.append(message)
        return keep, again

    def _says_state_differs(self, partition: int, reply: Message) -> bool:
        try:
            parsed = read_train_reply(reply)
        except PayloadError:
            return False
        if parsed.partition_id != partition or parsed.payload is not None or parsed.loss is not None:
            return False
        state = self.state
        return not needs_resync(state, partition) and (parsed.version, parsed.checksum) != (
            state.expected_version(partition, upload=False), state.checksum(partition))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate all replies, apply uploads and skips in partition order, then step theta."""
        state = self.state
        meter = self._meter
        partition_of_message = {message.metadata.message_id: p for p, message in self._sent.items()}
        accepted: dict[int, tuple[float | None, np.ndarray | None, float]] = {}
        answered: set[int] = set()
        differs: list[int] = []
        payload_bits = 0
        rejected = 0
        uplink = 0
        reasons: list[str] = []

        def refuse(partition: int | None, node: int, reason: str) -> None:
            nonlocal rejected
            rejected += 1
            where = "" if partition is None else f" (partition {partition})"
            log(WARNING, "Round %d: refused a reply of node %d%s: %s", server_round, node, where, reason)
            reasons.append(f"node {node}{where}: {reason}")

        for reply in replies:
            partition = partition_of_message.get(reply.metadata.reply_to_message_id)
            source = reply.metadata.src_node_id
            if partition is None:
                refuse(None, source, "it answers no message of this round")
                continue
            node = self._sent[partition].metadata.dst_node_id
            if partition in answered:
                refuse(partition, source, "a second reply to one message")
                continue
            answered.add(partition)
            if source == node:  # SuperLink-made error replies never crossed the uplink
                uplink += meter.uplink_bytes(reply)
            if reply.has_error():
                refuse(partition, node, f"error reply: {reply.error.reason}")
                continue
            try:
                parsed = read_train_reply(reply)
                if parsed.partition_id is not None and parsed.partition_id != partition:
                    raise PayloadError(f"it answers for partition {parsed.partition_id}, the message was for {partition}")
                if parsed.partition_id is not None and parsed.payload is None and parsed.loss is None:
                    if not self._says_state_differs(partition, reply):  # the one test, shared with follow_up
                        raise PayloadError("it says its state differs, yet it answered a reset (which ignores its "
                                           "state) or its version and checksum are the server's")
                    differs.append(partition)
                    log(INFO, "Round %d: the worker of partition %d (node %d) holds state version %d, the server %d: "
                        "restoring it next round", server_round, partition, node, parsed.version, state.versions[partition])
                    continue
                new_copy = None
                if parsed.payload is not None:
                    new_copy = state.decode(partition, parsed.payload)
                    bits = state.payload_bits(parsed.payload)
                elif partition in self._forced:
                    raise PayloadError("skipped although the upload was forced (first upload, (7b) or a resync)")
                elif self._report and parsed.checksum is None:
                    raise PayloadError("a bare skip in a report round, which asks every worker for loss and checksum")
                if parsed.version is not None:
                    expected_version = state.expected_version(partition, upload=new_copy is not None)
                    if parsed.version != expected_version:
                        raise PayloadError(f"state version {parsed.version}, the server expects {expected_version}")
                    self._verify_checksum(partition, new_copy, parsed.checksum)
            except PayloadError as error:
                refuse(partition, node, str(error))
                continue
            if new_copy is not None:
                payload_bits += bits
            accepted[partition] = (parsed.loss, new_copy, parsed.error_sq or 0.0)

        self._failed_rounds = self._failed_rounds + 1 if self._sent and not accepted and not differs else 0
        if self._failed_rounds >= MAX_FAILED_ROUNDS:
            raise RunStopped(
                f"round {server_round}: no reply was accepted in {self._failed_rounds} consecutive rounds, so the run "
                f"cannot make progress; {len(reasons)} of {len(self._sent)} replies were refused, e.g. "
                + "; ".join(reasons[:3] or [f"no node replied within round-timeout ({self.timeout:g} s)"])
            )

        # Same order as the in-process driver (worker 0..M-1), so the float64 aggregate matches it bit for bit.
        for partition, (_, new_copy, error_sq) in sorted(accepted.items()):
            state.delivered(partition)
            self.roster.answered(self._serving[partition])
            if new_copy is None:
                state.skip(partition)
            else:
                state.commit(partition, new_copy, error_sq)
        for partition in self._not_contacted:
            state.skip(partition)
        for partition in differs:
            self.roster.answered(self._serving[partition])
            state.skip(partition)
            state.state_differs(partition)
        missing = [p for p in self._sent if p not in accepted and p not in differs]
        for partition in missing:
            state.lost(partition)
            self.roster.failed(self._serving[partition])
        lost = len([p for p in missing if p not in answered])
        if lost:
            log(WARNING, "Round %d: %d worker(s) did not reply; their stale copies stay in the aggregate", server_round, lost)

        uploads = sum(new_copy is not None for _, new_copy, _ in accepted.values())
        losses = [loss for _, (loss, _, _) in sorted(accepted.items()) if loss is not None]  # partition order, as the driver
        identify_up = self._membership.get("identify-uplink-bytes", 0)
        identify_down = self._membership.get("identify-downlink-bytes", 0)
        metrics = {
            "uploads": uploads,
            "skips": len(accepted) - uploads,
            "rejected": rejected,
            "lost": lost,
            "resyncs": len(missing) + len(differs),
            "restores": self._restores,
            "not-contacted": len(self._not_contacted),
            "identified": self._membership.get("identified", 0),
            "duplicates": self._membership.get("duplicates", 0),
            "unserved": self._membership.get("unserved", 0),
            "full-broadcasts": self._full_broadcasts,
            "payload-bits": payload_bits,
            "downlink-payload-bits": self._downlink_bits,
            "uplink-bytes": uplink + identify_up + self._superseded_uplink,
            "downlink-bytes": sum(meter.downlink_bytes(message) for message in [*self._sent.values(), *self._superseded])
            + identify_down,
            "identify-bytes": identify_up + identify_down,
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "loss-reports": len(losses),
            "loss-missing": len(missing) + len(differs),
        }
        self.round_metrics[server_round] = metrics
        try:
            state.step()
        except NonFiniteError as error:
            raise RunStopped(f"round {server_round}: {error}") from error
        # The model everyone holds: theta^{k+1}, or theta_tilde^{k+1} with two-way broadcasts.
        return ArrayRecord([state.iterate]), MetricRecord(metrics)

    def _verify_checksum(self, partition: int, new_copy: np.ndarray | None, checksum: int) -> None:
        """Raise :class:`PayloadError` unless the worker's Q_hat (after this upload) and theta_tilde are the server's."""
        state = self.state
        if new_copy is None:
            expected = state.checksum(partition)
        else:
            expected = state_checksum(new_copy, None if state.downlink is None else state.downlink.theta_tilde)
        if checksum != expected:
            raise PayloadError(f"state checksum {checksum:#010x} differs from the server's {expected:#010x}: resync")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the ServerApp evaluates theta centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
