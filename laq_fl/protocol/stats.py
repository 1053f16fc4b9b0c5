"""One round's statistics: the one list of per-round counts that the strategy fills, the ServerApp logs, the results
file stores (a column each, kebab-case, with a cumulative ``-cum`` twin for the totals) and the driver reports."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class RoundStats:
    """What happened in one round (one iteration k of Algorithm 2).

    Attributes
    ----------
    uploads, skips
        Accepted replies that uploaded, and that skipped (rule (7a) or the same-sample test said so).
    rejected
        Replies refused: error replies, malformed, unsolicited, duplicate, inconsistent (each logged with its node
        and reason).
    lost
        Contacted workers whose reply never came within ``round-timeout``.
    resyncs
        Workers reset or restored at their next contact (lost or refused replies, states that differ).
    restores
        Restores sent this round (:class:`~laq_fl.protocol.Restore`).
    not_contacted
        Partitions sent nothing: the rule left them alone (``ps``), or no node serves them.
    identified, duplicates, unserved
        Nodes identified, nodes newly seen claiming a partition another node serves, partitions no node serves.
    full_broadcasts
        Two-way: workers sent the full ``theta_tilde`` (first contact, a resync, or too far behind).
    payload_bits, downlink_payload_bits
        The compressors' bit counts of the accepted uploads, and of the iterate in this round's broadcasts.
    uplink_bytes, downlink_bytes, identify_bytes
        Bytes on the wire both ways, measured from Flower's serialisation (identification included, and counted
        alone in ``identify_bytes``); 0 in the driver, which has no wire.
    train_loss, loss_reports, loss_missing
        The mean of the losses accepted (NaN when none), how many, and how many contacted workers' losses are missing
        (reply lost or refused).
    """

    uploads: int = 0
    skips: int = 0
    rejected: int = 0
    lost: int = 0
    resyncs: int = 0
    restores: int = 0
    not_contacted: int = 0
    identified: int = 0
    duplicates: int = 0
    unserved: int = 0
    full_broadcasts: int = 0
    payload_bits: int = 0
    downlink_payload_bits: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    identify_bytes: int = 0
    train_loss: float = math.nan
    loss_reports: int = 0
    loss_missing: int = 0

    def metrics(self) -> dict[str, int | float]:
        """The columns under their kebab-case names (``payload_bits`` -> ``payload-bits``), in declaration order."""
        return {field.name.replace("_", "-"): getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def names(cls) -> list[str]:
        """The kebab-case column names, in declaration order."""
        return [field.name.replace("_", "-") for field in dataclasses.fields(cls)]
