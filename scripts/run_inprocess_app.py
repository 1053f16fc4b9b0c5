"""Run the real ServerApp, strategy and ClientApp through the in-process Grid: no Ray, no SuperLink.

    python scripts/run_inprocess_app.py --run-config 'data-dir="/abs/shared/data" out-dir="/tmp/runs"'

Takes the same --run-config string as `flwr run` (TOML values) and writes the same results file.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import tomllib

from flwr.app import Context, RecordDict

from client_app import app as client_app
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.flower.serverapp import results_path
from laq_fl.run_config import parse_run_config
from summarize_runs import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", default="", help="space-separated key=value pairs, TOML values")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    args = parser.parse_args()
    run_config = tomllib.loads("\n".join(_split(args.run_config)))
    settings = parse_run_config(run_config)
    if args.quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # A fresh run id per call, as a SuperLink gives: results files without a run-name do not overwrite each other.
    grid = InProcessGrid(client_app, settings.num_clients, run_config, seed=secrets.randbits(64))
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    run_server(grid, context)
    print(summarize(results_path(settings, context.run_id)))


def _split(pairs: str) -> list[str]:
    """'a=1 b="x y"' -> ['a=1', 'b="x y"'] (spaces inside quotes kept), as flwr parses --run-config."""
    items, current, quoted = [], "", False
    for char in pairs:
        if char == '"':
            quoted = not quoted
        if char == " " and not quoted:
            if current:
                items.append(current)
            current = ""
        else:
            current += char
    return items + ([current] if current else [])


if __name__ == "__main__":
    main()
