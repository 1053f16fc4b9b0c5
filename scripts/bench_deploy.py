"""Seconds per round of a real deployment on 127.0.0.1: LAQ against Flower's own floor, same SuperNodes, same TLS.

    python scripts/bench_deploy.py [--rounds 12] [--dataset mnist] [--data-dir DIR] [--out results/bench-deploy.json]

Starts the deployment of scripts/deploy_tls.py (TLS, SuperNode authentication, three SuperNodes) twice, and runs:

  floor     scripts/floor_app: a ServerApp that broadcasts a 7,850-float array and a ClientApp that answers at once
            with a payload of a LAQ upload's size (Flower's own cost per round: messaging and, in Flower 1.42, one
            `flwr-clientapp` process per message, which loads Flower and the app)
  laq       this project's app: LAQ logistic regression (M = 3), every worker reporting every round, each message
            handled in its flwr-clientapp process (which imports torch and reads its shard)
  laq-warm  the same on SuperNodes that each have a warm worker (laq_fl.flower.warm_worker), to which the
            ClientApp forwards: torch and the data stay loaded between messages

and reports the median seconds per round of each (round 1 excluded: it builds caches), the ratios to the floor
(the target is <= 1.3), the slowest round (from which the README's minimum safe `round-timeout` follows), and what
a fresh process pays before any arithmetic (imports; one shard read with and without the shard cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_tls import NUM_NODES, REPO_ROOT, Deployment  # noqa: E402
from experiments import git_revision, machine  # noqa: E402

from laq_fl.codec import packed_size  # noqa: E402
from laq_fl.results import read_results  # noqa: E402


STARTUP_PROBES = {
    "import flwr (the floor's ClientApp)": "import flwr.clientapp, flwr.app",
    "import client_app (forwarding to a warm worker)": "import client_app",
    "import client_app and its handler (cold)": "import client_app, laq_fl.flower.client",
    "import torch": "import torch",
}


def probe_seconds(code: str, env: dict) -> float:
    """Wall seconds of ``code`` in a fresh Python process (what a flwr-clientapp process pays), median of three."""
    timed = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", timed], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, check=True).stdout) for _ in range(3)]
    return statistics.median(runs)


def startup_costs(args: argparse.Namespace, base: Path) -> dict:
    """What each message's fresh process pays before any arithmetic: imports, and one worker's MNIST shard read
    without and with the shard cache ($LAQ_FL_CACHE_DIR)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LAQ_FL_CACHE_DIR": str(base / "shard-cache")}
    costs = {name: probe_seconds(code, env) for name, code in STARTUP_PROBES.items()}
    load = ("from laq_fl.config import ProblemConfig; from laq_fl.problem import local_objective; "
            f"import torch; t = time.perf_counter(); local_objective(ProblemConfig(dataset={args.dataset!r}, "
            f"data_dir={str(Path(args.data_dir).resolve())!r}, num_workers={NUM_NODES}), 0)")
    shard = f"import time; {load}; print(time.perf_counter() - t)"
    first = float(subprocess.run([sys.executable, "-c", shard], cwd=REPO_ROOT, env=env, capture_output=True,
                                 text=True, check=True).stdout)
    cached = statistics.median(float(subprocess.run([sys.executable, "-c", shard], cwd=REPO_ROOT, env=env,
                                                    capture_output=True, text=True, check=True).stdout)
                               for _ in range(3))
    costs["read one shard, no cache"] = first
    costs["read one shard, cached"] = cached
    return costs


def run_laq(deployment: Deployment, base: Path, name: str, args: argparse.Namespace) -> dict:
    run_config = {"num-clients": NUM_NODES, "rounds": args.rounds, "dataset": args.dataset,
                  "data-dir": str(Path(args.data_dir).resolve()), "out-dir": str(base / "out"), "run-name": name,
                  "report-every": 1, "round-timeout": 120.0, "checkpoint-every": 0}
    started = time.perf_counter()
    run_id = deployment.submit(run_config)
    status = deployment.wait(run_id, timeout=60 + 150 * args.rounds)
    rows, _ = read_results(base / "out" / f"{name}.jsonl")
    seconds = [row["round-seconds"] for row in rows if row["round"] > 1]
    return {"status": status, "round-1-seconds": rows[1]["round-seconds"] if len(rows) > 1 else None,
            "round-seconds": seconds, "wall-seconds": time.perf_counter() - started}


def run_floor(deployment: Deployment, base: Path, args: argparse.Namespace) -> dict:
    floor_out = base / "floor.json"
    floor_config = {"rounds": args.rounds, "size": 7850, "reply-bytes": 4 + packed_size(4, 7850),
                    "num-clients": NUM_NODES, "out": str(floor_out)}
    started = time.perf_counter()
    run_id = deployment.submit(floor_config, app=REPO_ROOT / "scripts" / "floor_app")
    status = deployment.wait(run_id, timeout=60 + 150 * args.rounds)
    seconds = json.loads(floor_out.read_text())["round_seconds"]
    return {"status": status, "round-1-seconds": seconds[0], "round-seconds": seconds[1:],
            "wall-seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "synthetic"))
    parser.add_argument("--data-dir", default=os.environ.get("LAQ_FL_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-deploy.json")
    args = parser.parse_args()

    report: dict = {"command": "python scripts/bench_deploy.py " + " ".join(sys.argv[1:]), "machine": machine(),
                    "revision": git_revision(), "rounds": args.rounds, "supernodes": NUM_NODES, "dataset": args.dataset}
    base = Path(tempfile.mkdtemp(prefix="laqbench"))
    try:
        report["startup-seconds"] = startup_costs(args, base)
        for warm in (False, True):
            folder = base / ("warm" if warm else "cold")
            folder.mkdir()
            deployment = Deployment(folder, warm=warm)
            try:
                if not warm:
                    report["floor"] = run_floor(deployment, deployment.base, args)
                report["laq-warm" if warm else "laq"] = run_laq(deployment, deployment.base, "laq", args)
            finally:
                deployment.stop()
        median = {key: statistics.median(report[key]["round-seconds"]) for key in ("laq", "laq-warm", "floor")}
        report["median-seconds"] = median
        report["laq/floor"] = median["laq"] / median["floor"]
        report["laq-warm/floor"] = median["laq-warm"] / median["floor"]
        report["slowest-round-seconds"] = {key: max([report[key]["round-1-seconds"], *report[key]["round-seconds"]])
                                           for key in ("laq", "laq-warm", "floor")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({key: report[key] for key in ("startup-seconds", "median-seconds", "laq/floor", "laq-warm/floor",
                                                   "slowest-round-seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
