"""The LAQ family as one Flower strategy (Sun, Chen, Giannakis, Yang, NeurIPS 2019).

One round of Algorithm 2 per Flower round:

1. ``configure_train`` asks the rule's server half what each node gets: the broadcast (theta^k, or with two-way
   broadcasts the innovations of theta_tilde that node is missing, or theta_tilde in full) with the shared
   threshold, the forced-upload flag (7b, first upload) and the reset flag (resync), or no message at all.
2. Workers reply with an upload (the compressor's payload, with their loss and state checksum) or an empty skip;
   in report rounds (every ``report_every``) every contacted worker adds its loss and checksum.
3. ``aggregate_train`` sorts replies into uploads, skips and rejects, validates every upload before
   applying any, folds uploads into the per-node copies and the lazy aggregate in partition order, keeps
   stale copies for skips and rejects, and steps ``theta^{k+1} = theta^k - alpha nabla^k`` (4).

Every member (GD ... LAQ, SGD ... SLAQ-WK2, EF-SignSGD, TernGrad, DGC) is this class with its
:class:`~laq_fl.config.AlgorithmConfig`; the minibatch members ask for seeded minibatch gradients.
theta^0 comes from ``start(grid, initial_arrays)``, the one source of the starting point.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from laq_fl.codec import PayloadError
from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import state_checksum
from laq_fl.flower.messages import read_train_reply, train_content
from laq_fl.flower.wire import WireMeter
from laq_fl.server_state import ServerState


MAX_FAILED_ROUNDS = 3
"""Consecutive rounds in which no contacted worker's reply was accepted before the run stops."""


class LaqStrategy(Strategy):
    """Lazily aggregated, compressed gradient descent for any member of the family.

    Parameters
    ----------
    config
        The algorithm's settings (``algorithm``, ``bits``, ``lr``, ``xi``, ``t_bar``, ``batch_size``, ``density``).
    num_workers
        M in rule (7a).
    report_every
        Every how many rounds each contacted worker reports its loss and state checksum even when it skips
        (round 1, then every ``report_every``-th, and the last); 0: only uploads carry them.

    Attributes
    ----------
    state
        The :class:`~laq_fl.server_state.ServerState` (theta, lazy aggregate, per-node copies and clocks);
        ``None`` until ``start`` (or the first ``configure_train``) gives it theta^0.
    round_metrics
        Per round: uploads, skips, rejected, not-contacted, full-broadcasts, payload-bits, downlink-payload-bits,
        uplink-bytes, downlink-bytes, train-loss (the mean of the losses reported) and loss-reports (how many).

    Raises
    ------
    RuntimeError
        From ``aggregate_train`` when no reply was accepted in ``MAX_FAILED_ROUNDS`` consecutive rounds
        (every worker failing: a bad configuration, data missing on the nodes...), naming the errors.
    """

    def __init__(self, config: AlgorithmConfig, num_workers: int, report_every: int = 10) -> None:
        if isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 0:
            raise ValueError(f"report_every must be an integer >= 0, got {report_every!r}")
        self.config = config
        self.num_workers = num_workers
        self.report_every = report_every
        self.num_rounds: int | None = None
        self.state: ServerState | None = None
        self.round_metrics: dict[int, dict[str, float | int]] = {}
        self.partitions: dict[int, int] = {}
        """Node id -> the partition its replies named (a bare skip names none)."""
        self._sent: dict[int, Message] = {}
        self._report = False
        self._full_broadcasts = 0
        self._downlink_bits = 0
        self._forced: set[int] = set()
        self._not_contacted: list[int] = []
        self._failed_rounds = 0

    @property
    def batch_size(self) -> int:
        """0 asks workers for full local gradients."""
        return self.config.batch_size if self.config.spec.minibatch else 0

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args, **kwargs) -> Result:  # type: ignore[override]
        """Run the rounds from theta^0 = ``initial_arrays`` (one flat float array); see ``Strategy.start``."""
        self.state = self._state_from(initial_arrays)
        self.round_metrics = {}
        self.partitions = {}
        self._failed_rounds = 0
        self.num_rounds = kwargs.get("num_rounds", args[0] if args else None)
        return super().start(grid, initial_arrays, *args, **kwargs)

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

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """theta^k with its instruction to every node the rule's server half contacts."""
        if self.state is None:  # hooks called without start(): theta^0 is the arrays passed in
            self.state = self._state_from(arrays)
        state = self.state
        full_theta = None  # one record, built when first needed: its objects are shared by all messages
        node_ids = sorted(grid.get_node_ids())
        for gone in set(state.copies) - set(node_ids):
            # A restarted SuperNode comes back under a new id; its old copy must leave the aggregate,
            # or that partition would count twice once the new node uploads.
            log(WARNING, "Round %d: node %d is gone; dropping its copy from the aggregate", server_round, gone)
            state.forget(gone)
        self._sent = {}
        self._forced = set()
        self._not_contacted = []
        self._report = self.reports_in(server_round)
        self._full_broadcasts = 0
        self._downlink_bits = 0
        compressor, memory, rule = state.compressor, state.memory.name, self.config.spec.rule
        downlink = None if state.downlink is None else state.downlink.compressor
        for node_id in node_ids:
            instruction = state.instruction(node_id)
            if instruction is None:
                self._not_contacted.append(node_id)
                continue
            if instruction.force_upload:
                self._forced.add(node_id)
            broadcast = state.broadcast(node_id)
            if broadcast.full and full_theta is None:
                full_theta = ArrayRecord([broadcast.theta])
            self._full_broadcasts += broadcast.full and downlink is not None
            self._downlink_bits += broadcast.payload_bits(downlink, state.size)
            content = train_content(full_theta, broadcast, downlink, server_round - 1, compressor, memory, rule,
                                    self.batch_size, instruction, self._report)
            self._sent[node_id] = Message(content, node_id, MessageType.TRAIN, group_id=str(server_round))
        return list(self._sent.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate all replies, apply uploads and skips in partition order, then step theta."""
        state = self.state
        node_of_message = {message.metadata.message_id: node for node, message in self._sent.items()}
        accepted: dict[int, tuple[int, float | None, np.ndarray | None]] = {}
        payload_bits = 0
        meter = WireMeter()
        rejected = 0
        uplink = 0
        reasons: list[str] = []
        for reply in replies:
            node = node_of_message.get(reply.metadata.reply_to_message_id)
            if node is None or node in accepted:
                log(WARNING, "Round %d: ignoring a reply that answers no message of this round", server_round)
                continue
            if reply.metadata.src_node_id == node:  # SuperLink-made error replies never crossed the uplink
                uplink += meter.uplink_bytes(reply)
            if reply.has_error():
                log(WARNING, "Round %d: node %d replied with error %s", server_round, node, reply.error.reason)
                reasons.append(f"node {node}: {reply.error.reason}")
                rejected += 1
                continue
            try:
                parsed = read_train_reply(reply)
                partition = self.partitions.get(node) if parsed.partition_id is None else parsed.partition_id
                new_copy = None
                if parsed.payload is not None:
                    new_copy = state.decode(node, parsed.payload)
                    bits = state.payload_bits(parsed.payload)
                elif node in self._forced:
                    raise PayloadError("skipped although the upload was forced (first upload, (7b) or a resync)")
                elif self._report and parsed.checksum is None:
                    raise PayloadError("a bare skip in a report round, which asks every worker for loss and checksum")
                if partition is None:
                    raise PayloadError("a bare skip from a node that never named its partition")
                if parsed.checksum is not None:
                    self._verify_checksum(node, new_copy, parsed.checksum)
            except PayloadError as error:
                log(WARNING, "Round %d: rejected the reply of node %d, keeping its stale copy: %s", server_round, node, error)
                reasons.append(f"node {node}: {error}")
                rejected += 1
                continue
            if new_copy is not None:
                payload_bits += bits
            self.partitions[node] = partition
            accepted[node] = (partition, parsed.loss, new_copy)

        self._failed_rounds = self._failed_rounds + 1 if self._sent and not accepted else 0
        if self._failed_rounds >= MAX_FAILED_ROUNDS:
            raise RuntimeError(
                f"round {server_round}: no reply was accepted in {self._failed_rounds} consecutive rounds, so the run "
                f"cannot make progress; {len(reasons)} of {len(self._sent)} replies were errors, e.g. "
                + "; ".join(reasons[:3] or ["no node replied within round-timeout"])
            )

        # Same order as the in-process driver (worker 0..M-1), so the float64 aggregate matches it bit for bit.
        for node, (_, _, new_copy) in sorted(accepted.items(), key=lambda item: (item[1][0], item[0])):
            state.delivered(node)
            if new_copy is None:
                state.skip(node)
            else:
                state.commit(node, new_copy)
        for node in self._not_contacted:
            state.skip(node)
        missing = [node for node in self._sent if node not in accepted]
        for node in missing:
            state.lost(node)
        if len(missing) > rejected:
            log(WARNING, "Round %d: %d node(s) did not reply; their stale copies stay in the aggregate", server_round, len(missing) - rejected)

        uploads = sum(new_copy is not None for _, _, new_copy in accepted.values())
        # Partition order, as the driver averages, so the mean is the same float.
        losses = [loss for _, (_, loss, _) in sorted(accepted.items(), key=lambda item: (item[1][0], item[0])) if loss is not None]
        metrics = {
            "uploads": uploads,
            "skips": len(accepted) - uploads,
            "rejected": len(missing),
            "not-contacted": len(self._not_contacted),
            "full-broadcasts": self._full_broadcasts,
            "payload-bits": payload_bits,
            "downlink-payload-bits": self._downlink_bits,
            "uplink-bytes": uplink,
            "downlink-bytes": sum(meter.downlink_bytes(message) for message in self._sent.values()),
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "loss-reports": len(losses),
        }
        self.round_metrics[server_round] = metrics
        state.step()
        # The model everyone holds: theta^{k+1}, or theta_tilde^{k+1} with two-way broadcasts.
        return ArrayRecord([state.iterate]), MetricRecord(metrics)

    def _verify_checksum(self, node: int, new_copy: np.ndarray | None, checksum: int) -> None:
        """Raise :class:`PayloadError` unless the node's Q_hat (after this upload) and theta_tilde are the server's."""
        state = self.state
        if new_copy is None:
            expected = state.checksum(node)
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
