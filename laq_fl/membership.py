"""Which node serves which worker: the server's roster, keyed by partition (worker index m), not by node.

A worker's state (``Q_hat_m``, its version, ``theta_tilde``) belongs to its partition m. Nodes come and go: a
SuperNode restarts under a new id (or, with node authentication, the same id and an empty state), two nodes can be
started with the same ``partition-id``, a node can vanish and come back. The roster keeps the server's view:

- A node is *identified* once, the first time the server sees its id: it says which partition it serves and the
  version and checksum of the state it holds (:class:`Identity`).
- Every round, each partition is *served* by one node (:meth:`Roster.assign`): a node that keeps answering keeps
  its partition; when the serving node is gone or its last contact failed, the newest other node claiming the
  partition takes over (a restarted node is the newest); a partition nobody served yet goes to its first claimant.
  Every other node claiming a served partition is a *duplicate*: never contacted while the serving node answers,
  and named in a warning.
- A partition no listed node claims is *unserved*; its stale copy stays in the lazy aggregate. The caller stops the
  run when a partition stays unserved for too many rounds in a row (:attr:`Roster.unserved_rounds`).

No Flower import: the roster is plain bookkeeping over node ids (ints) and partitions (0..M-1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    """What a node says of itself when first identified.

    Attributes
    ----------
    partition
        The worker index m it serves (its ``partition-id``), ``0 <= m < M``.
    version
        Uploads since its last reset (0: no state).
    checksum
        CRC-32 of its ``Q_hat`` (and ``theta_tilde``), or ``None`` when it holds no state.
    """

    partition: int
    version: int = 0
    checksum: int | None = None


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
        self.identities: dict[int, Identity] = {}
        """Node id -> what it said when identified."""
        self.serving: dict[int, int] = {}
        """Partition -> the node that served it last."""
        self.failing: set[int] = set()
        """Nodes whose last contact failed (no reply, an error, a rejected reply)."""
        self.unserved_rounds: dict[int, int] = dict.fromkeys(range(num_partitions), 0)
        """Partition -> consecutive rounds without a node claiming it."""
        self._order: dict[int, int] = {}
        self._reported_duplicates: set[int] = set()
        self._replaced: set[int] = set()  # former serving nodes: a ghost of a restarted node, not a duplicate

    def unknown(self, listed: Iterable[int]) -> list[int]:
        """The listed nodes not identified yet, in id order."""
        return sorted(node for node in listed if node not in self.identities)

    def identify(self, node: int, identity: Identity) -> None:
        """Record what ``node`` said. Raises ``ValueError`` for a partition outside ``0..M-1``."""
        if not 0 <= identity.partition < self.num_partitions:
            raise ValueError(
                f"it serves partition {identity.partition}, outside 0..{self.num_partitions - 1}"
            )
        self.identities[node] = identity
        self._order[node] = len(self._order)
        self._reported_duplicates.discard(node)

    def forget(self, node: int) -> None:
        """Identify ``node`` again when next seen (its reply said it holds another state than expected)."""
        self.identities.pop(node, None)
        self.failing.discard(node)

    def answered(self, node: int) -> None:
        self.failing.discard(node)

    def failed(self, node: int) -> None:
        self.failing.add(node)

    def partition_of(self, node: int) -> int | None:
        identity = self.identities.get(node)
        return None if identity is None else identity.partition

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
                self.unserved_rounds[partition] += 1
                outcome.unserved.append(partition)
                continue
            self.unserved_rounds[partition] = 0
            if holder in nodes and holder not in self.failing:
                chosen = holder
            elif holder is None:
                chosen = nodes[0]
            else:
                healthy = [node for node in nodes if node != holder and node not in self.failing]
                chosen = healthy[-1] if healthy else (holder if holder in nodes else nodes[-1])
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
