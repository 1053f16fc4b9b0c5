"""The judgement of one reply: is it an upload, a skip, a worker saying its state differs, or refused (and why)?

:func:`judge` is a pure function of the decoded reply and what the server expected of that worker
(:class:`Expectation`); the only computation it asks for is through :class:`Checksums` (decode the payload against
the server's copy, checksum the copy the server holds). It changes nothing: the caller applies the verdicts, in
partition order, to the server's state. A reply is judged once.

Checks, in order (the first that fails refuses the reply and names why):

1. it answers for the partition the message was for (else refused, and the node is identified again: what the
   server knew of it is stale, e.g. a node restarted with another ``partition-id`` under the same id);
2. a reply without payload and loss says the worker's state differs: believed only when the server did not ask
   for a reset (which ignores the worker's state) and the worker's version or checksum is not the server's;
3. a payload decodes against the server's copy (:class:`~laq_fl.errors.PayloadError` otherwise);
4. a skip is allowed: not when the upload was forced, and in a report round only with loss and checksum;
5. the version it reports is the server's count after this round (one more on an upload; 1 after a reset);
6. its checksum is that of the copy the server holds (or, for an upload, of the copy the payload makes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from laq_fl.errors import PayloadError
from laq_fl.protocol.records import TrainReply


@dataclass(frozen=True)
class Expectation:
    """What the server expects of one worker's reply this round (from the message it sent).

    Attributes
    ----------
    partition
        The partition the message was for.
    version
        The worker's upload count before this round as the server counts it (0 when a reset was asked).
    forced
        The upload was forced ((7b), a first upload, a reset): a skip is refused.
    reset
        The worker was told to restart from ``Q_hat = 0``, so its own state does not matter.
    report
        A report round: a skip must carry its loss and checksum.
    """

    partition: int
    version: int
    forced: bool
    reset: bool
    report: bool


class Checksums(Protocol):
    """The computations :func:`judge` asks of the server (both deterministic, neither changes anything)."""

    def of_upload(self, payload: bytes) -> int:
        """The checksum of the copy ``payload`` makes against the server's; raises
        :class:`~laq_fl.errors.PayloadError` when it does not decode or the copy is not finite."""

    def held(self) -> int:
        """The checksum the worker's state has if it agrees with the server's copy (and ``theta_tilde``)."""


class Outcome(enum.Enum):
    UPLOAD = "upload"
    """Accepted: fold the decoded copy into the aggregate."""
    SKIP = "skip"
    """Accepted: keep the stale copy."""
    STATE_DIFFERS = "state-differs"
    """The worker did not compute: its state is not the server's; restore it with the next message."""
    REFUSED = "refused"
    """Malformed, inconsistent or not allowed: keep the stale copy and reset the worker at the next contact."""


@dataclass(frozen=True)
class Verdict:
    """The judgement of one reply.

    Attributes
    ----------
    outcome
        :class:`Outcome`.
    reason
        Why a reply was refused (empty otherwise); logged with the node and counted.
    reidentify
        The reply answers for another partition: the server's identity of the node is stale, ask it again.
    """

    outcome: Outcome
    reason: str = ""
    reidentify: bool = False

    @property
    def accepted(self) -> bool:
        return self.outcome in (Outcome.UPLOAD, Outcome.SKIP)

    @classmethod
    def refused(cls, reason: str, reidentify: bool = False) -> Verdict:
        return cls(Outcome.REFUSED, reason, reidentify)


def judge(reply: TrainReply, expected: Expectation, checksums: Checksums) -> Verdict:
    """The :class:`Verdict` on ``reply`` (a decoded :class:`~laq_fl.protocol.TrainReply`) to the message described by
    ``expected``; checks 1-6 of the module docstring. Never raises for any reply."""
    if reply.partition_id is not None and reply.partition_id != expected.partition:
        return Verdict.refused(f"it answers for partition {reply.partition_id}, the message was for "
                               f"{expected.partition}: identifying the node again", reidentify=True)
    if reply.says_state_differs:
        if expected.reset or (reply.version, reply.checksum) == (expected.version, checksums.held()):
            return Verdict.refused("it says its state differs, yet it answered a reset (which ignores its state) or "
                                   "its version and checksum are the server's")
        return Verdict(Outcome.STATE_DIFFERS)
    upload_checksum = None
    if reply.payload is not None:
        try:
            upload_checksum = checksums.of_upload(reply.payload)
        except PayloadError as error:
            return Verdict.refused(str(error))
    elif expected.forced:
        return Verdict.refused("skipped although the upload was forced (first upload, (7b) or a resync)")
    elif expected.report and reply.checksum is None:
        return Verdict.refused("a bare skip in a report round, which asks every worker for loss and checksum")
    uploaded = reply.payload is not None
    if reply.version is not None:
        want = expected.version + 1 if uploaded else expected.version
        if reply.version != want:
            return Verdict.refused(f"state version {reply.version}, the server expects {want}")
        held = upload_checksum if uploaded else checksums.held()
        if reply.checksum != held:
            stated = "none" if reply.checksum is None else f"{reply.checksum:#010x}"
            return Verdict.refused(f"state checksum {stated} differs from the server's {held:#010x}: resync")
    return Verdict(Outcome.UPLOAD if uploaded else Outcome.SKIP)
