"""Seconds per round of a real deployment on 127.0.0.1: LAQ against Flower's own floor, same SuperNodes, same TLS.

    python scripts/bench_deploy.py [--rounds 12] [--dataset mnist] [--data-dir DIR] [--out results/bench-deploy.json]

Starts the deployment of scripts/deploy_tls.py (TLS, SuperNode authentication, three SuperNodes), then runs on it:

  laq    this project's app: LAQ logistic regression (M = 3), every worker reporting every round
  floor  scripts/floor_app: a ServerApp that broadcasts a 7,850-float array and a ClientApp that answers at once
         with a payload of a LAQ upload's size (Flower's own cost per round: messaging and, in Flower 1.42, one
         `flwr-clientapp` process per message, which loads Flower and the app)

and reports the median seconds per round of each (round 1 excluded: it builds caches), their ratio (the target is
laq / floor <= 1.3), and the slowest round, from which the README's minimum safe `round-timeout` follows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_tls import NUM_NODES, REPO_ROOT, Deployment  # noqa: E402
from experiments import git_revision, machine  # noqa: E402

from laq_fl.codec import packed_size  # noqa: E402
from laq_fl.results import read_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "synthetic"))
    parser.add_argument("--data-dir", default=os.environ.get("LAQ_FL_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-deploy.json")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="laqbench"))
    deployment = Deployment(base)
    report: dict = {"command": "python scripts/bench_deploy.py " + " ".join(sys.argv[1:]), "machine": machine(),
                    "revision": git_revision(), "rounds": args.rounds, "supernodes": NUM_NODES, "dataset": args.dataset}
    try:
        run_config = {"num-clients": NUM_NODES, "rounds": args.rounds, "dataset": args.dataset,
                      "data-dir": str(Path(args.data_dir).resolve()), "out-dir": str(base / "out"), "run-name": "laq",
                      "report-every": 1, "round-timeout": 120.0, "checkpoint-every": 0}
        started = time.perf_counter()
        run_id = deployment.submit(run_config)
        status = deployment.wait(run_id, timeout=60 + 150 * args.rounds)
        rows, _ = read_results(base / "out" / "laq.jsonl")
        laq = [row["round-seconds"] for row in rows if row["round"] > 1]
        report["laq"] = {"status": status, "round-seconds": laq, "wall-seconds": time.perf_counter() - started}

        floor_out = base / "floor.json"
        floor_config = {"rounds": args.rounds, "size": 7850, "reply-bytes": 4 + packed_size(4, 7850),
                        "num-clients": NUM_NODES, "out": str(floor_out)}
        started = time.perf_counter()
        run_id = deployment.submit(floor_config, app=REPO_ROOT / "scripts" / "floor_app")
        status = deployment.wait(run_id, timeout=60 + 150 * args.rounds)
        floor = json.loads(floor_out.read_text())["round_seconds"][1:]
        report["floor"] = {"status": status, "round-seconds": floor, "wall-seconds": time.perf_counter() - started}

        report["median-seconds"] = {"laq": statistics.median(laq), "floor": statistics.median(floor)}
        report["laq/floor"] = report["median-seconds"]["laq"] / report["median-seconds"]["floor"]
        report["slowest-round-seconds"] = {"laq": max(laq), "floor": max(floor)}
    finally:
        deployment.stop()
        shutil.rmtree(base, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({key: report[key] for key in ("median-seconds", "laq/floor", "slowest-round-seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
