"""The per-round results file of a run: JSON Lines, one object per round, flushed as it goes, and a last line
``{"status": "completed" | "failed", ...}`` that says how the run ended (absent: it was killed or is running).
:func:`read_results` splits a file into its rounds and that status. A row's columns are the round's
:class:`~laq_fl.protocol.RoundStats` (kebab-case), cumulative twins, the caller's extra columns and the times."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, TextIO

from laq_fl.protocol import RoundStats

CUMULATIVE = ("uploads", "payload-bits", "downlink-payload-bits", "uplink-bytes", "downlink-bytes", "total-bytes")


class RoundLog:
    """Adds cumulative columns and wall time to each round's row and appends it to ``path``.

    Columns: ``round``, ``algorithm``, every field of :class:`~laq_fl.protocol.RoundStats` under its kebab-case name
    (``uploads``, ``skips``, ``rejected``, ``lost``, ``resyncs``, ``restores``, ``not-contacted``, ``identified``,
    ``duplicates``, ``unserved``, ``full-broadcasts``, ``payload-bits`` (uplink), ``downlink-payload-bits`` (the
    iterate's bits in the broadcasts), ``uplink-bytes``, ``downlink-bytes``, ``identify-bytes`` (measured from
    Flower's serialisation), ``train-loss`` (the mean of the f_m(theta^{k-1}) accepted this round), ``loss-reports``
    and ``loss-missing``), ``total-bytes`` (both directions), a ``-cum`` total beside each of :data:`CUMULATIVE`, the
    caller's extra columns (the ServerApp's ``train-loss-of``, ``test-loss``, ``test-accuracy`` at theta^k), then
    ``round-seconds`` and ``wall-seconds``.

    ``resume_after=r`` continues an existing file (a resumed run): its rounds ``0..r`` are kept with their totals,
    any later rows and status line dropped (atomically), and new rows appended. Raises ``ValueError`` when the file
    does not hold round ``r``.
    """

    def __init__(self, path: Path, algorithm: str, resume_after: int | None = None) -> None:
        self.path = path
        self.algorithm = algorithm
        self.totals = dict.fromkeys(CUMULATIVE, 0)
        self.rows: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        wall = 0.0
        if resume_after is not None:
            rows, _ = read_results(path) if path.exists() else ([], None)
            self.rows = [row for row in rows if row["round"] <= resume_after]
            if not self.rows or self.rows[-1]["round"] != resume_after:
                raise ValueError(f"{path} does not hold round {resume_after} to resume after")
            for key in CUMULATIVE:
                self.totals[key] = self.rows[-1].get(f"{key}-cum", 0)
            wall = self.rows[-1].get("wall-seconds") or 0.0
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
            os.replace(temporary, path)
        self._file: TextIO = path.open("a" if resume_after is not None else "w", encoding="utf-8")
        self._started = time.perf_counter() - wall
        self._last = time.perf_counter()

    def record(self, server_round: int, stats: RoundStats, **extra: Any) -> dict[str, Any]:
        """Append the row of ``server_round``: ``stats``' columns, then ``extra`` ones; returns the row."""
        now = time.perf_counter()
        columns = {**stats.metrics(), **extra}
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

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Write the status line: ``status`` ("completed" or "failed"), the last round, the totals, ``error``."""
        trained = [row for row in self.rows if row["round"] > 0]
        line: dict[str, Any] = {"status": status, "algorithm": self.algorithm,
                                "rounds": trained[-1]["round"] if trained else 0, **self.totals}
        if error is not None:
            line["error"] = error
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        return line

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


def read_results(path: Path | str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The round rows of a results file, in order, and its status line (``None`` if the run did not finish)."""
    rows, status = [], None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "status" in row:
            status = row
        else:
            rows.append(row)
    return rows, status
