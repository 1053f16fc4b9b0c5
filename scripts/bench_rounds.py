"""Seconds per round of LAQ logistic regression on MNIST, from the bare arithmetic up to `flwr run`.

    python scripts/bench_rounds.py --clients 10 100 --rounds 30

For each number of clients M, the median seconds per round of:
  bare      a loop doing only the arithmetic: M full local gradients and their quantization, theta step
  driver    laq_fl's in-process driver (payload bytes, rule, server state)
  grid      the Flower app (ServerApp, LaqStrategy, ClientApp) through the in-process Grid
  flwr-run  the Flower app under `flwr run .` (Ray simulation, private SuperLink on 127.0.0.1)
  floor     a trivial Flower app with the same message sizes under `flwr run .` (Flower's own cost)
and the ratios the targets are stated in: grid / bare and flwr-run / floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, REPO_ROOT, machine, run_flower_app

from laq_fl.codec import packed_size
from laq_fl.compressors import Grid
from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.flower.local_run import flwr_run, free_port, private_env, start_superlink, stop_processes
from laq_fl.problem import build_problem
from laq_fl.results import read_results


def bare_loop(clients: int, rounds: int, data_dir: str) -> list[float]:
    problem = build_problem(ProblemConfig(data_dir=data_dir, num_workers=clients))
    theta = problem.initial_theta.copy()
    copies = [np.zeros_like(theta) for _ in range(clients)]
    grid = Grid(bits=4)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        total = np.zeros(theta.shape, np.float64)
        for m, objective in enumerate(problem.objectives):
            _, grad = objective.loss_and_gradient(theta)
            innovation = grad.astype(np.float64) - copies[m]  # as the worker forms it, in float64
            copies[m] = (grid.compress(innovation).value + copies[m]).astype(np.float32)  # eq. (5)-(6)
            total += copies[m]
        theta = (theta - 0.02 * total).astype(np.float32)
        seconds.append(time.perf_counter() - started)
    return seconds


def flwr_run_seconds(app_dir: Path, run_config: dict, clients: int, result_file: Path | None = None) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="laqb", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    env = private_env(base, port)
    superlink = start_superlink(base, env, port)
    try:
        run = flwr_run(app_dir, env, run_config, num_supernodes=clients)
        if run["status"] != "finished:completed":
            raise RuntimeError(f"flwr run failed: {run['details']}\n{run['logs'][-2000:]}")
    finally:
        stop_processes([superlink.pid])
        superlink.wait(timeout=10)
    if result_file is not None:
        return json.loads(result_file.read_text())["round_seconds"]
    rows, _ = read_results(Path(run_config["out-dir"]) / f"{run_config['run-name']}.jsonl")
    return [row["round-seconds"] for row in rows[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--modes", nargs="+", default=["bare", "driver", "grid", "flwr-run", "floor"])
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    out_dir = args.out_dir.resolve()
    report = {"machine": machine(), "rounds": args.rounds, "results": []}
    for clients in args.clients:
        medians = {}
        run_config = {"num-clients": clients, "rounds": args.rounds, "data-dir": data_dir, "out-dir": str(out_dir / "runs")}
        for mode in args.modes:
            if mode == "bare":
                seconds = bare_loop(clients, args.rounds, data_dir)
            elif mode == "driver":
                seconds = run_in_process(AlgorithmConfig(), ProblemConfig(data_dir=data_dir, num_workers=clients), args.rounds).column("seconds").tolist()
            elif mode == "grid":
                rows = run_flower_app({**run_config, "run-name": f"bench-grid-{clients}"})
                seconds = [row["round-seconds"] for row in rows[1:]]
            elif mode == "flwr-run":
                seconds = flwr_run_seconds(REPO_ROOT, {**run_config, "run-name": f"bench-flwr-{clients}"}, clients)
            elif mode == "floor":
                out = out_dir / f"bench-floor-{clients}.json"
                floor_config = {"rounds": args.rounds, "size": 7850, "reply-bytes": 4 + packed_size(4, 7850),
                                "num-clients": clients, "out": str(out)}
                seconds = flwr_run_seconds(REPO_ROOT / "scripts" / "floor_app", floor_config, clients, result_file=out)
            else:
                raise SystemExit(f"unknown mode {mode}")
            # The first rounds pay start-up costs (imports, data loading, Ray actors): leave them out.
            medians[mode] = statistics.median(seconds[2:] if len(seconds) > 4 else seconds)
            print(f"M={clients} {mode}: median {medians[mode]:.4f} s/round", flush=True)
        ratios = {}
        if "grid" in medians and "bare" in medians:
            ratios["grid/bare"] = medians["grid"] / medians["bare"]
        if "flwr-run" in medians and "floor" in medians:
            ratios["flwr-run/floor"] = medians["flwr-run"] / medians["floor"]
            ratios["(flwr-run - floor)/bare"] = (medians["flwr-run"] - medians["floor"]) / medians.get("bare", float("nan"))
        report["results"].append({"clients": clients, "median_seconds": medians, "ratios": ratios})
        print(json.dumps(report["results"][-1]), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-rounds.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
