"""Identification over Flower: the ``query`` messages that ask nodes which partition they serve.

The decisions are the protocol's (:class:`~laq_fl.protocol.Membership`: whom to ask, when to ask again, when to give
up); this module only carries them. Queries travel beside the training rounds: :meth:`Identification.poll` pushes the
questions that are due and reads whatever answers have come (``Grid.push_messages`` / ``Grid.pull_messages``, never
``send_and_receive``), so a node that answers late, or never, holds up no round. An in-process Grid answers at once;
a deployment's answers are read at the next poll (the next round, or the next half second while the server waits
for a node per partition before the first round).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import Message, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from laq_fl.errors import NodeConfigError, RunStopped
from laq_fl.flower.messages import identify_content, read_identity
from laq_fl.flower.wire import WireMeter
from laq_fl.protocol import Membership


@dataclass
class QueryTraffic:
    """What identification did in one round: nodes identified, and the bytes of the queries and of their answers."""

    identified: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0


class Identification:
    """Asks the nodes ``membership`` does not know which partition they serve, and applies their answers.

    ``round_timeout``: seconds an unanswered question waits before it counts as a failed attempt.
    """

    def __init__(self, membership: Membership, round_timeout: float) -> None:
        self.membership = membership
        self.round_timeout = round_timeout
        self.pending: dict[str, int] = {}
        """Message id of an outstanding query -> the node asked."""

    def poll(self, server_round: int, grid: Grid, meter: WireMeter, traffic: QueryTraffic, starting: bool = False,
             waiting: bool = False) -> None:
        """Read the answers that came, give up waiting on old questions, ask every listed unknown node that is due,
        and read what came back at once; never waits.

        ``starting``: before the first round, a node whose node config does not fit the run stops it
        (:class:`~laq_fl.errors.RunStopped` naming every such node and its error: the operator is starting the
        federation); later such a node is only named in a warning and not asked again until its back-off ends (a
        stray SuperNode must not stop a healthy run; if its partition then goes unserved, that stop names it).
        ``waiting``: the server waits for a node per partition before the first round (a node that answered with an
        error is asked again after seconds, not rounds)."""
        queries, now = self.membership.queries, time.monotonic()
        self._collect(server_round, grid, meter, traffic, starting)
        for node in queries.expired(now, self.round_timeout):
            self.pending = {key: asked for key, asked in self.pending.items() if asked != node}
            self._failed(server_round, node, f"no answer within round-timeout ({self.round_timeout:g} s)")
        due = queries.due(self.membership.roster.unknown(grid.get_node_ids()), server_round, now if waiting else None)
        if not due:
            return
        messages = [Message(identify_content(), node, MessageType.QUERY, group_id=f"{server_round}-identify")
                    for node in due]
        traffic.downlink_bytes += sum(meter.downlink_bytes(message) for message in messages)
        pushed = set(grid.push_messages(messages))  # a grid sets each message's id in place and returns those it took
        for node, message in zip(due, messages):
            queries.asked(node, now)
            if message.metadata.message_id in pushed:
                self.pending[message.metadata.message_id] = node
            else:
                self._failed(server_round, node, "the SuperLink did not take the query")
        self._collect(server_round, grid, meter, traffic, starting)

    def _collect(self, server_round: int, grid: Grid, meter: WireMeter, traffic: QueryTraffic, starting: bool) -> None:
        if not self.pending:
            return
        roster, config_errors = self.membership.roster, []
        for reply in grid.pull_messages(list(self.pending)):
            node = self.pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue  # an answer to a question already given up on
            if reply.metadata.src_node_id == node:  # SuperLink-made error replies never crossed the uplink
                traffic.uplink_bytes += meter.uplink_bytes(reply)
            if reply.has_error():
                self._failed(server_round, node, reply.error.reason)
                continue
            try:
                identity = read_identity(reply)
                roster.identify(node, identity)
            except (NodeConfigError, ValueError) as error:  # PayloadError is a ValueError too: a node that
                config_errors.append(f"node {node}: {error}")  # answers nonsense to identify is misconfigured
                if not starting:
                    self._failed(server_round, node, f"its node config does not fit this run: {error}")
                continue
            self.membership.queries.answered(node)
            traffic.identified += 1
            log(INFO, "Round %d: node %d serves partition %d (state version %d)", server_round, node,
                identity.partition, identity.version)
        if config_errors and starting:
            raise RunStopped(
                f"round {server_round}: {len(config_errors)} node(s) do not fit this run "
                f"({len(list(grid.get_node_ids()))} node(s) connected for num-clients={roster.num_partitions}); fix "
                "their --node-config (partition-id in 0..num-clients-1, num-partitions = num-clients) or the run "
                "config: " + "; ".join(config_errors)
            )

    def _failed(self, server_round: int, node: int, reason: str) -> None:
        queries = self.membership.queries
        if queries.failed(node, server_round, reason, time.monotonic()):
            log(WARNING, "Round %d: node %d could not say which partition it serves (%s); giving up on it after %d "
                "attempt(s)", server_round, node, reason, queries.nodes[node].attempts)
        else:
            log(WARNING, "Round %d: node %d could not say which partition it serves (%s); asking again in round %d",
                server_round, node, reason, queries.nodes[node].next_round)
