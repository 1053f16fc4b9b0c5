"""The per-round results file of a run: JSON Lines, one object per round, flushed as it goes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

CUMULATIVE = ("uploads", "payload-bits", "downlink-payload-bits", "uplink-bytes", "downlink-bytes", "total-bytes")


class RoundLog:
    """Adds cumulative columns and wall time to each round's row and appends it to ``path``.

    Columns: ``round``, ``algorithm``, ``uploads``/``uploads-cum``, ``payload-bits``/``-cum`` (uplink) and
    ``downlink-payload-bits``/``-cum`` (the iterate's bits in the broadcasts), ``uplink-bytes``/``-cum``,
    ``downlink-bytes``/``-cum`` and ``total-bytes``/``-cum`` (both directions, measured from Flower's
    serialisation), ``skips``, ``rejected``, ``not-contacted``, ``full-broadcasts``, ``train-loss`` (the mean of
    the f_m(theta^{k-1}) reported this round) and ``loss-reports`` (how many: M in report rounds when every worker
    was contacted, else the uploaders) and ``train-loss-of`` (which of the two), ``test-loss`` and ``test-accuracy`` (at theta^k), ``round-seconds`` and
    ``wall-seconds``.
    """

    def __init__(self, path: Path, algorithm: str) -> None:
        self.path = path
        self.algorithm = algorithm
        self.totals = dict.fromkeys(CUMULATIVE, 0)
        self.rows: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w", encoding="utf-8")
        self._started = time.perf_counter()
        self._last = self._started

    def record(self, server_round: int, **columns: Any) -> dict[str, Any]:
        now = time.perf_counter()
        row: dict[str, Any] = {"round": server_round, "algorithm": self.algorithm}
        if "uplink-bytes" in columns and "downlink-bytes" in columns:
            columns["total-bytes"] = columns["uplink-bytes"] + columns["downlink-bytes"]
        for key, value in columns.items():
            row[key] = value
            if key in self.totals:
                self.totals[key] += value
                row[f"{key}-cum"] = self.totals[key]
        row["round-seconds"] = now - self._last
        row["wall-seconds"] = now - self._started
        self._last = now
        self.rows.append(row)
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        return row

    def close(self) -> None:
        self._file.close()

    def summary(self) -> str:
        """One line: rounds, uploads, bits, bytes both ways, final loss and accuracy, median round time."""
        trained = [row for row in self.rows if row["round"] > 0]
        if not trained:
            return f"{self.algorithm}: no rounds"
        last = trained[-1]
        seconds = sorted(row["round-seconds"] for row in trained)
        return (
            f"{self.algorithm}: {len(trained)} rounds, {self.totals['uploads']} uploads, "
            f"{self.totals['payload-bits']:.4g} payload bits up, {self.totals['downlink-payload-bits']:.4g} down, "
            f"uplink {self.totals['uplink-bytes']:,} B + downlink {self.totals['downlink-bytes']:,} B = "
            f"{self.totals['total-bytes']:,} B, train loss {last.get('train-loss', float('nan')):.6f} "
            f"({last.get('loss-reports', 0)} workers), "
            f"test accuracy {last.get('test-accuracy', float('nan')):.4f}, "
            f"median {seconds[len(seconds) // 2]:.3f} s/round; results in {self.path}"
        )


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
