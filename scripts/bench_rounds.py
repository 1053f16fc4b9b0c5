"""Seconds per round of LAQ on a task (MNIST by default), from the bare arithmetic up to `flwr run`.

    python scripts/bench_rounds.py --clients 10 100 --rounds 30
    python scripts/bench_rounds.py --tasks mnist-logistic mnist-mlp --clients 10 --modes bare driver

For each task and number of clients M, the median seconds per round of:
  bare      a plain torch loop doing only LAQ's arithmetic (scripts/bare_loop.py): M full local gradients,
            the b-bit quantization of each innovation, the rule's test, the lazy aggregate and the step
  driver    laq_fl's in-process driver (payload bytes, rule, server state, records; no test evaluation,
            as in the bare loop)
  driver-torch  the same with the workers' rounds and the server's aggregate in torch (gradients_on_device,
            what a GPU runs; on the CPU the same theta bit for bit)
  grid      the Flower app (ServerApp, LaqStrategy, ClientApp) through the in-process Grid
  flwr-run  the Flower app under `flwr run .` (Ray simulation, private SuperLink on 127.0.0.1)
  floor     a trivial Flower app with the same message sizes under `flwr run .` (Flower's own cost)
and the ratios the targets are stated in: driver / bare, grid / bare and flwr-run / floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bare_loop import bare_laq_seconds
from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, REPO_ROOT, git_revision, machine, run_flower_app

from laq_fl.codec import packed_size
from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.flower.local_run import flwr_run, free_port, private_env, start_superlink, stop_processes
from laq_fl.problem import build_problem
from laq_fl.results import read_results


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
    parser.add_argument("--tasks", nargs="+", default=["mnist-logistic"])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="bare and driver only: cpu, cuda or auto")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--modes", nargs="+", default=["bare", "driver", "grid", "flwr-run", "floor"])
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1 (medians leave out the first two rounds when there are more than four)")
    data_dir = str(Path(args.data_dir).resolve())
    out_dir = args.out_dir.resolve()
    report = {"machine": machine(), "revision": git_revision(), "rounds": args.rounds, "bits": args.bits,
              "device": args.device, "results": []}
    for task in args.tasks:
        for clients in args.clients:
            medians = {}
            problem_config = ProblemConfig(data_dir=data_dir, num_workers=clients, task=task, device=args.device)
            problem = build_problem(problem_config) if {"bare", "driver", "driver-torch"} & set(args.modes) else None
            run_config = {"task": task, "num-clients": clients, "rounds": args.rounds, "bits": args.bits,
                          "data-dir": data_dir, "out-dir": str(out_dir / "runs")}
            for mode in args.modes:
                if mode == "bare":
                    seconds = bare_laq_seconds(problem, args.rounds, bits=args.bits)
                elif mode in ("driver", "driver-torch"):
                    for objective in problem.objectives:
                        objective.gradients_on_device = mode == "driver-torch" or objective.device.type != "cpu"
                    result = run_in_process(AlgorithmConfig(bits=args.bits), problem, args.rounds, evaluate_every=0)
                    seconds = result.column("seconds").tolist()
                elif mode == "grid":
                    rows = run_flower_app({**run_config, "run-name": f"bench-grid-{task}-{clients}"})
                    seconds = [row["round-seconds"] for row in rows[1:]]
                elif mode == "flwr-run":
                    seconds = flwr_run_seconds(REPO_ROOT, {**run_config, "run-name": f"bench-flwr-{task}-{clients}"}, clients)
                elif mode == "floor":
                    size = build_problem(problem_config, workers=[]).size if problem is None else problem.size
                    out = out_dir / f"bench-floor-{task}-{clients}.json"
                    floor_config = {"rounds": args.rounds, "size": size, "reply-bytes": 4 + packed_size(args.bits, size),
                                    "num-clients": clients, "out": str(out)}
                    seconds = flwr_run_seconds(REPO_ROOT / "scripts" / "floor_app", floor_config, clients, result_file=out)
                else:
                    raise SystemExit(f"unknown mode {mode}")
                # The first rounds pay start-up costs (imports, data loading, Ray actors): leave them out.
                medians[mode] = statistics.median(seconds[2:] if len(seconds) > 4 else seconds)
                print(f"{task} M={clients} {mode}: median {medians[mode]:.4f} s/round", flush=True)
            ratios = {f"{mode}/bare": medians[mode] / medians["bare"] for mode in ("driver", "driver-torch", "grid")
                      if mode in medians and "bare" in medians}
            if "flwr-run" in medians and "floor" in medians:
                ratios["flwr-run/floor"] = medians["flwr-run"] / medians["floor"]
                ratios["(flwr-run - floor)/bare"] = (medians["flwr-run"] - medians["floor"]) / medians.get("bare", float("nan"))
            report["results"].append({"task": task, "clients": clients, "median_seconds": medians, "ratios": ratios})
            print(json.dumps(report["results"][-1]), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-rounds.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
