"""LAQ and SLAQ as Flower strategies (Sun, Chen, Giannakis, Yang, NeurIPS 2019).

One round of Algorithm 2 per Flower round:

1. ``configure_train`` broadcasts theta^k with, per node, the (7a) threshold, the forced-upload
   flag (7b) and a reset flag for nodes whose last reply was lost.
2. Workers reply with an upload (packed innovation) or an empty skip.
3. ``aggregate_train`` sorts replies into uploads, skips and rejects, validates every upload
   before applying any, folds uploads into the per-node copies and the lazy aggregate, keeps
   stale copies for skips and rejects, and steps ``theta^{k+1} = theta^k - alpha nabla^k`` (4).

GD, QGD, LAG and LAQ are :class:`LaqStrategy` with the matching :class:`~laq_fl.config.AlgorithmConfig`;
SGD, SLAQ, LASG and SLAQ-WK2 are :class:`SlaqStrategy`, which asks for minibatch gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from laq_fl.codec import PayloadError
from laq_fl.config import AlgorithmConfig
from laq_fl.flower.messages import read_train_reply, train_content
from laq_fl.flower.wire import WireMeter
from laq_fl.server import ServerMemory


class LaqStrategy(Strategy):
    """Lazily Aggregated Quantized gradient descent on full local gradients (GD, QGD, LAG, LAQ).

    Parameters
    ----------
    config
        The algorithm's settings (``algorithm``, ``bits``, ``lr``, ``xi``, ``t_bar``).
    initial_theta
        theta^0 as one flat float array.
    num_workers
        M in rule (7a).

    Attributes
    ----------
    memory
        The server memory: theta, lazy aggregate, per-node copies and clocks.
    round_metrics
        Per round: uploads, skips, rejected, payload-bits, uplink-bytes, downlink-bytes, train-loss.
    """

    stochastic = False

    def __init__(self, config: AlgorithmConfig, initial_theta: np.ndarray, num_workers: int) -> None:
        if config.spec.stochastic != self.stochastic:
            expected = "SlaqStrategy" if config.spec.stochastic else "LaqStrategy"
            raise ValueError(f"algorithm {config.algorithm!r} runs with {expected}; use make_strategy()")
        self.config = config
        self.memory = ServerMemory(np.asarray(initial_theta), config, num_workers)
        self.round_metrics: dict[int, dict[str, float | int]] = {}
        self._sent: dict[int, Message] = {}

    @property
    def batch_size(self) -> int:
        """0 asks workers for full local gradients."""
        return 0

    def summary(self) -> None:
        config = self.config
        log(
            INFO,
            "\t%s: algorithm=%s compressor=%s bits=%s lr=%s D=%d sum(xi)=%.3g t_bar=%d batch=%s M=%d p=%d",
            type(self).__name__,
            config.algorithm,
            config.compressor.scheme,
            config.wire_bits,
            config.lr,
            config.memory,
            sum(config.xi),
            config.t_bar,
            self.batch_size or "full",
            self.memory.num_workers,
            self.memory.size,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """theta^k to every node, with its threshold, forced-upload and reset flags."""
        theta = ArrayRecord([self.memory.theta])  # one record: its objects are shared by all messages
        node_ids = sorted(grid.get_node_ids())
        for gone in set(self.memory.copies) - set(node_ids):
            # A restarted SuperNode comes back under a new id; its old copy must leave the aggregate,
            # or that partition would count twice once the new node uploads.
            log(WARNING, "Round %d: node %d is gone; dropping its copy from the aggregate", server_round, gone)
            self.memory.forget(gone)
        self._sent = {}
        for node_id in node_ids:
            content = train_content(
                theta,
                server_round - 1,
                self.config.compressor,
                self.batch_size,
                self.config.spec.rule,
                self.memory.instruction(node_id),
            )
            self._sent[node_id] = Message(content, node_id, MessageType.TRAIN, group_id=str(server_round))
        return list(self._sent.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate all replies, apply uploads and skips in partition order, then step theta."""
        node_of_message = {message.metadata.message_id: node for node, message in self._sent.items()}
        accepted: dict[int, tuple[int, float, np.ndarray | None]] = {}
        compressor = self.config.compressor
        payload_bits = 0
        meter = WireMeter()
        rejected = 0
        uplink = 0
        for reply in replies:
            node = node_of_message.get(reply.metadata.reply_to_message_id)
            if node is None or node in accepted:
                log(WARNING, "Round %d: ignoring a reply that answers no message of this round", server_round)
                continue
            if reply.metadata.src_node_id == node:  # SuperLink-made error replies never crossed the uplink
                uplink += meter.uplink_bytes(reply)
            if reply.has_error():
                log(WARNING, "Round %d: node %d replied with error %s", server_round, node, reply.error.reason)
                rejected += 1
                continue
            try:
                parsed = read_train_reply(reply)
                new_copy = None
                if parsed.payload is not None:
                    upload = compressor.from_bytes(parsed.payload)
                    new_copy = self.memory.decode(node, upload)
                    payload_bits += compressor.payload_bits(upload, self.memory.size, self.memory.theta.dtype.itemsize)
            except PayloadError as error:
                log(WARNING, "Round %d: rejected the reply of node %d, keeping its stale copy: %s", server_round, node, error)
                rejected += 1
                continue
            accepted[node] = (parsed.partition_id, parsed.loss, new_copy)

        # Same order as the in-process driver (worker 0..M-1), so the float64 aggregate matches it bit for bit.
        for node, (_, _, new_copy) in sorted(accepted.items(), key=lambda item: (item[1][0], item[0])):
            if new_copy is None:
                self.memory.skip(node)
            else:
                self.memory.commit(node, new_copy)
        missing = [node for node in self._sent if node not in accepted]
        for node in missing:
            self.memory.lost(node)
        if len(missing) > rejected:
            log(WARNING, "Round %d: %d node(s) did not reply; their stale copies stay in the aggregate", server_round, len(missing) - rejected)

        uploads = sum(new_copy is not None for _, _, new_copy in accepted.values())
        losses = [loss for _, loss, _ in accepted.values()]
        metrics = {
            "uploads": uploads,
            "skips": len(accepted) - uploads,
            "rejected": len(missing),
            "payload-bits": payload_bits,
            "uplink-bytes": uplink,
            "downlink-bytes": sum(meter.downlink_bytes(message) for message in self._sent.values()),
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
        }
        self.round_metrics[server_round] = metrics
        new_theta = self.memory.step()
        return ArrayRecord([new_theta]), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the ServerApp evaluates theta centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


class SlaqStrategy(LaqStrategy):
    """The stochastic members (SGD, SLAQ, LASG, SLAQ-WK2): the same protocol on seeded minibatch gradients."""

    stochastic = True

    @property
    def batch_size(self) -> int:
        return self.config.batch_size


def make_strategy(config: AlgorithmConfig, initial_theta: np.ndarray, num_workers: int) -> LaqStrategy:
    """The strategy class that runs ``config.algorithm``."""
    cls = SlaqStrategy if config.spec.stochastic else LaqStrategy
    return cls(config, initial_theta, num_workers)
