"""Summarise results files (JSON Lines, one row per round) into one table row each.

    python scripts/summarize_runs.py ~/laq-fl-runs/*.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from laq_fl.results import read_results


def summarize(path: Path) -> dict:
    rows, status = read_results(path)
    trained = [row for row in rows if row["round"] > 0]
    ended = "running or killed" if status is None else status["status"]
    if not trained:  # stopped before round 1: only the status line says why
        nan = float("nan")
        return {"file": path.name, "algorithm": status["algorithm"] if status else "?", "status": ended, "rounds": 0,
                **dict.fromkeys(("uploads", "payload bits", "uplink B", "downlink B", "total B"), 0),
                **dict.fromkeys(("train loss", "test acc", "median s/round", "B per skip reply", "B per upload reply",
                                 "wall s"), nan)}
    last = trained[-1]
    return {
        "file": path.name,
        "algorithm": last["algorithm"],
        "status": ended,
        "rounds": len(trained),
        "uploads": last["uploads-cum"],
        "payload bits": last["payload-bits-cum"],
        "uplink B": last["uplink-bytes-cum"],
        "downlink B": last["downlink-bytes-cum"],
        "total B": last.get("total-bytes-cum", last["uplink-bytes-cum"] + last["downlink-bytes-cum"]),
        "train loss": last.get("train-loss"),
        "test acc": last["test-accuracy"],
        "median s/round": statistics.median(row["round-seconds"] for row in trained),
        # Per-reply wire cost, from rounds where every reply was of one kind.
        "B per skip reply": _median([row["uplink-bytes"] / row["skips"] for row in trained
                                     if row["skips"] and not row["uploads"] and not row.get("loss-reports")]),
        "B per upload reply": _median([row["uplink-bytes"] / row["uploads"] for row in trained if row["uploads"] and not row["skips"]]),
        "wall s": last["wall-seconds"],
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    table = [summarize(path) for path in args.files]
    header = list(table[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        cells = [f"{v:.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v)) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
