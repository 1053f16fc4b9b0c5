"""Plain records of the protocol: what the server keeps of each worker, and what a reply, a restore and a node's
identity carry once they are off the wire (no Flower: :mod:`laq_fl.flower.messages` maps them to records)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from laq_fl.downlink import NO_VERSION

WorkerKey = Hashable
"""What identifies a worker on the server: its partition m (an ``int``) in the app and the driver."""


class Sync(enum.Enum):
    """Whether the server can be sure a worker holds what the server holds for it (the protocol's resync rules).

    ======================  ===============================================  ==================================
    state                   when                                             the next contact
    ======================  ===============================================  ==================================
    ``NEW``                 the server holds no copy (never uploaded, or      a forced upload from ``Q_hat = 0``
                            forgotten)                                        (a *reset*)
    ``IN_SYNC``             the last contact was accepted                     what the rule says
    ``RESET``               the last reply was lost, an error or refused:     a reset upload (and, two-way, the
                            the worker may have moved its ``Q_hat``           full ``theta_tilde``)
    ``RESTORE``             the worker holds another state and did not move   carries a :class:`Restore` of the
                            it (it said so, or a new node took it over)       server's copy; then as ``IN_SYNC``
    ======================  ===============================================  ==================================
    """

    NEW = "new"
    IN_SYNC = "in-sync"
    RESET = "reset"
    RESTORE = "restore"


def _column(name: str, kind: str) -> dict[str, str]:
    return {"column": name, "kind": kind}


@dataclass
class WorkerRecord:
    """The server's record of one worker: everything per worker that the lazy aggregate, the rules and the resync
    protocol need. Checkpoints store every field as one column (its metadata names it; :func:`record_columns`).

    Attributes
    ----------
    copy
        ``Q_hat_m``, its last upload as the server decoded it (shape ``(p,)``, the run's dtype; a torch tensor when the
        server computes on a device), or ``None`` before the first upload. The lazy aggregate is the sum of the copies.
    version
        Uploads since the worker's last reset; the worker counts the same.
    error_sq
        ``||eps_hat_m||^2`` the worker reported with its last upload (for a :class:`Restore`).
    skip_clock
        Consecutive rounds without an upload (skips or no contact), for (7b).
    sync
        :class:`Sync`; ``NEW`` exactly when ``copy`` is ``None``.
    theta_version
        Two-way: the version of ``theta_tilde`` the worker holds as far as its accepted replies show
        (:data:`~laq_fl.downlink.NO_VERSION`: unknown, send it in full).
    upload_iterate
        ``theta_hat_m``, the iterate of its last upload (numpy, the run's dtype); kept only for rules that need it.
    smoothness
        The server's estimate of ``L_m`` (the ``ps`` rule), ``None`` until two uploads give a secant.
    """

    copy: Any = field(default=None, metadata=_column("copies", "vector"))
    version: int = field(default=0, metadata=_column("versions", "int"))
    error_sq: float = field(default=0.0, metadata=_column("error-sqs", "float"))
    skip_clock: int = field(default=0, metadata=_column("skip-clocks", "int"))
    sync: Sync = field(default=Sync.NEW, metadata=_column("sync", "sync"))
    theta_version: int = field(default=NO_VERSION, metadata=_column("theta-versions", "int"))
    upload_iterate: np.ndarray | None = field(default=None, metadata=_column("upload-iterates", "vector"))
    smoothness: float | None = field(default=None, metadata=_column("smoothness", "optional-float"))

    @property
    def needs_reset(self) -> bool:
        """True when the next contact must be a forced upload from ``Q_hat = 0`` (``NEW`` or ``RESET``)."""
        return self.sync is Sync.NEW or self.sync is Sync.RESET


def record_columns() -> list[tuple[str, str, str]]:
    """``(field, column, kind)`` for every :class:`WorkerRecord` field, in declaration order; ``kind`` is ``vector``,
    ``int``, ``float``, ``optional-float`` or ``sync``."""
    return [(f.name, f.metadata["column"], f.metadata["kind"]) for f in dataclasses.fields(WorkerRecord)]


@dataclass(frozen=True)
class Restore:
    """What the server sends a worker whose state it knows to differ from its own (a node that lost its state, a
    resumed run): the worker's state as the server holds it, so the worker continues exactly where it was.

    Attributes
    ----------
    copy
        ``Q_hat_m``, shape ``(p,)`` in the run's dtype.
    version
        Uploads since the worker's last reset.
    error_sq
        ``||eps_hat_m||^2`` of the last upload (the worker reported it with the upload), for (7a).
    held
        The parts' arrays the server keeps too, by name: the iterate of the last upload (``theta-hat``) for rules
        that declare it (:attr:`~laq_fl.part_state.StateArray.upload_iterate`); empty otherwise.
    """

    copy: np.ndarray
    version: int
    error_sq: float
    held: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainReply:
    """A worker's reply to a ``train`` message, decoded; a bare skip has every field ``None``.

    Attributes
    ----------
    partition_id
        The partition the replying worker serves.
    loss
        ``f_m`` at the iterate it received; ``None`` when it did not compute (its state differs).
    payload
        The compressor's bytes of an upload; ``None`` for a skip.
    checksum
        CRC-32 of its ``Q_hat`` (and ``theta_tilde``) after the round.
    version
        Its upload count after the round.
    error_sq
        ``||eps_hat||^2`` of an upload (and only of one).
    """

    partition_id: int | None = None
    loss: float | None = None
    payload: bytes | None = None
    checksum: int | None = None
    version: int | None = None
    error_sq: float | None = None

    @property
    def says_state_differs(self) -> bool:
        """The reply of a worker that did not compute because its version is not the server's."""
        return self.partition_id is not None and self.payload is None and self.loss is None


@dataclass(frozen=True)
class NodeIdentity:
    """What a node says of itself when the server identifies it.

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
