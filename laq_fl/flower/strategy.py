"""The LAQ family as one Flower strategy (Sun, Chen, Giannakis, Yang, NeurIPS 2019).

One round of Algorithm 2 per Flower round:

1. ``configure_train`` asks the rule's server half what each node gets: theta^k with the shared threshold,
   the forced-upload flag (7b, first upload) and the reset flag (resync), or no message at all.
2. Workers reply with an upload (the compressor's payload) or an empty skip.
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

    Attributes
    ----------
    state
        The :class:`~laq_fl.server_state.ServerState` (theta, lazy aggregate, per-node copies and clocks);
        ``None`` until ``start`` (or the first ``configure_train``) gives it theta^0.
    round_metrics
        Per round: uploads, skips, rejected, not-contacted, payload-bits, uplink-bytes, downlink-bytes, train-loss.

    Raises
    ------
    RuntimeError
        From ``aggregate_train`` when no reply was accepted in ``MAX_FAILED_ROUNDS`` consecutive rounds
        (every worker failing: a bad configuration, data missing on the nodes...), naming the errors.
    """

    def __init__(self, config: AlgorithmConfig, num_workers: int) -> None:
        self.config = config
        self.num_workers = num_workers
        self.state: ServerState | None = None
        self.round_metrics: dict[int, dict[str, float | int]] = {}
        self._sent: dict[int, Message] = {}
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
        self._failed_rounds = 0
        return super().start(grid, initial_arrays, *args, **kwargs)

    def _state_from(self, arrays: ArrayRecord) -> ServerState:
        tensors = arrays.to_numpy_ndarrays()
        if len(tensors) != 1 or tensors[0].ndim != 1:
            raise ValueError(f"theta^0 must be one flat array, got shapes {[t.shape for t in tensors]}")
        return ServerState(tensors[0], self.config, self.num_workers)

    def summary(self) -> None:
        config = self.config
        log(
            INFO,
            "\t%s: algorithm=%s compressor=%s memory=%s rule=%s lr=%s D=%d sum(xi)=%.3g t_bar=%d batch=%s M=%d",
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
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """theta^k with its instruction to every node the rule's server half contacts."""
        if self.state is None:  # hooks called without start(): theta^0 is the arrays passed in
            self.state = self._state_from(arrays)
        state = self.state
        theta = ArrayRecord([state.theta])  # one record: its objects are shared by all messages
        node_ids = sorted(grid.get_node_ids())
        for gone in set(state.copies) - set(node_ids):
            # A restarted SuperNode comes back under a new id; its old copy must leave the aggregate,
            # or that partition would count twice once the new node uploads.
            log(WARNING, "Round %d: node %d is gone; dropping its copy from the aggregate", server_round, gone)
            state.forget(gone)
        self._sent = {}
        self._forced = set()
        self._not_contacted = []
        compressor, memory, rule = state.compressor, state.memory.name, self.config.spec.rule
        for node_id in node_ids:
            instruction = state.instruction(node_id)
            if instruction is None:
                self._not_contacted.append(node_id)
                continue
            if instruction.force_upload:
                self._forced.add(node_id)
            content = train_content(theta, server_round - 1, compressor, memory, rule, self.batch_size, instruction)
            self._sent[node_id] = Message(content, node_id, MessageType.TRAIN, group_id=str(server_round))
        return list(self._sent.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate all replies, apply uploads and skips in partition order, then step theta."""
        state = self.state
        node_of_message = {message.metadata.message_id: node for node, message in self._sent.items()}
        accepted: dict[int, tuple[int, float, np.ndarray | None]] = {}
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
                new_copy = None
                if parsed.payload is not None:
                    new_copy = state.decode(node, parsed.payload)
                    bits = state.payload_bits(parsed.payload)
                elif node in self._forced:
                    raise PayloadError("skipped although the upload was forced (first upload, (7b) or a resync)")
            except PayloadError as error:
                log(WARNING, "Round %d: rejected the reply of node %d, keeping its stale copy: %s", server_round, node, error)
                reasons.append(f"node {node}: {error}")
                rejected += 1
                continue
            if new_copy is not None:
                payload_bits += bits
            accepted[node] = (parsed.partition_id, parsed.loss, new_copy)

        self._failed_rounds = self._failed_rounds + 1 if self._sent and not accepted else 0
        if self._failed_rounds >= MAX_FAILED_ROUNDS:
            raise RuntimeError(
                f"round {server_round}: no reply was accepted in {self._failed_rounds} consecutive rounds, so the run "
                f"cannot make progress; {len(reasons)} of {len(self._sent)} replies were errors, e.g. "
                + "; ".join(reasons[:3] or ["no node replied within round-timeout"])
            )

        # Same order as the in-process driver (worker 0..M-1), so the float64 aggregate matches it bit for bit.
        for node, (_, _, new_copy) in sorted(accepted.items(), key=lambda item: (item[1][0], item[0])):
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
        losses = [loss for _, loss, _ in accepted.values()]
        metrics = {
            "uploads": uploads,
            "skips": len(accepted) - uploads,
            "rejected": len(missing),
            "not-contacted": len(self._not_contacted),
            "payload-bits": payload_bits,
            "uplink-bytes": uplink,
            "downlink-bytes": sum(meter.downlink_bytes(message) for message in self._sent.values()),
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
        }
        self.round_metrics[server_round] = metrics
        new_theta = state.step()
        return ArrayRecord([new_theta]), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the ServerApp evaluates theta centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
