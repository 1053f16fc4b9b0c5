"""The LAQ round protocol between the server and its workers, as plain data and pure decisions (no Flower).

What a round is (Algorithm 2 of Sun et al. 2019 with the state-identity rules of this project):

1. The server asks the rule's server half what each partition's worker gets: the broadcast (theta^k, or with
   two-way broadcasts what brings the worker's theta_tilde up to date), the shared threshold, the forced-upload
   flag ((7b), a first upload), the reset flag, the worker's version as the server counts it and, when the server
   knows the worker holds another state, a :class:`Restore` of its copy; or no message at all.
2. The worker replies with an upload (the compressor's payload, with its loss, version, checksum and
   ``||eps_hat||^2``) or a skip (empty, or in report rounds with loss, version and checksum); a worker whose
   version is not the server's says so instead of computing (:attr:`TrainReply.says_state_differs`).
3. The server judges each reply once (:func:`judge`, :class:`Verdict`), applies the verdicts in partition order
   (the float64 aggregate is then the same, bit for bit, whatever the arrival order) and steps
   ``theta^{k+1} = theta^k - alpha nabla^k`` (4), where ``nabla`` is the lazy aggregate ``sum_m Q_hat_m``.

Worker state belongs to a partition, never to a node id; the server keeps one :class:`WorkerRecord` per partition,
whose :class:`Sync` says what the next contact must repair:

- a reply lost, an error reply, or one refused: the worker may have moved its ``Q_hat``; the next contact is a
  forced *reset* upload from ``Q_hat = 0`` (and, two-way, the full ``theta_tilde``);
- the worker says its state differs (it restarted with an empty state, or the run resumed from a checkpoint), or a
  new node takes the partition over and its identity does not match: the worker did not move; the next contact
  *restores* the server's copy, version, ``||eps_hat||^2`` and the part arrays the server keeps (``theta_hat``),
  and the iteration goes on exactly as if nothing had happened (error-feedback residuals excepted: the server
  never sees them).

Who serves a partition, when to ask a node who it is, and when a partition that does not contribute stops the
run: :mod:`laq_fl.protocol.membership`. What a round counted: :class:`RoundStats`.
"""

from __future__ import annotations

from laq_fl.protocol.membership import (
    GRACE_ROUNDS,
    MAX_QUERY_ATTEMPTS,
    Assignment,
    Contributions,
    Membership,
    Queries,
    Roster,
)
from laq_fl.protocol.records import NodeIdentity, Restore, Sync, TrainReply, WorkerKey, WorkerRecord, record_columns
from laq_fl.protocol.stats import RoundStats
from laq_fl.protocol.verdict import Checksums, Expectation, Outcome, Verdict, judge

__all__ = [
    "GRACE_ROUNDS",
    "MAX_QUERY_ATTEMPTS",
    "Assignment",
    "Checksums",
    "Contributions",
    "Expectation",
    "Membership",
    "NodeIdentity",
    "Outcome",
    "Queries",
    "Restore",
    "Roster",
    "RoundStats",
    "Sync",
    "TrainReply",
    "Verdict",
    "WorkerKey",
    "WorkerRecord",
    "judge",
    "record_columns",
]
