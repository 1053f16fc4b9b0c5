"""Print the README's result tables from the JSON files the table scripts wrote.

    python scripts/render_tables.py            # reads results/table*.json and results/bytes-*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bytes_table import markdown as bytes_markdown
from experiments import DEFAULT_OUT_DIR, PAPER, markdown_table

LAZY = {"table2": ("gd", "laq"), "table3": ("sgd", "slaq-wk2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args()
    for path in sorted(args.results_dir.glob("table*.json")):
        summary = json.loads(path.read_text())
        reference, lazy = LAZY[path.stem.split("-")[0]]
        minutes = sum(row["seconds"] for row in summary["rows"]) / 60
        print(f"### {path.stem}\n")
        print(f"`{summary['command']}` — {minutes:.0f} min on {summary['machine']} (revision {summary['revision']})\n")
        if summary.get("f_star") is not None:
            print(f"f*/M = {summary['f_star']:.10f}; runs end at loss residual <= {summary['tolerance']:g}\n")
        print(markdown_table(summary["rows"], PAPER[summary.get("paper", path.stem)], reference, lazy))
        print()
    for path in sorted(args.results_dir.glob("bytes-*.json")):
        summary = json.loads(path.read_text())
        minutes = sum(row["seconds"] for row in summary["rows"]) / 60
        print(f"### {path.stem}\n")
        print(f"`{summary['command']}` — {minutes:.0f} min on {summary['machine']} (revision {summary['revision']})\n")
        print(bytes_markdown(summary))
        print()


if __name__ == "__main__":
    main()
