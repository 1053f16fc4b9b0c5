"""The GPU checks in one short run: the driver against a bare torch loop, the device path against
compressing on the CPU, and Table 2's network row at the paper's 8,000 iterations (GD, QGD, LAG, LAQ; MLP
784-200-10, b = 8).

    mkdir -p data && cp -r ../shared/data/MNIST data/      # MNIST travels inside the checkout (data/ is ignored)
    python scripts/gpu_table2.py --data-dir data --out results/gpu-table2.json

Needs torch, torchvision and numpy only (no Flower: it runs the in-process driver, which the Flower app equals bit
for bit on one device). Writes the report after every step, so a run cut short keeps what it measured:

1. ``ratio``: median seconds per LAQ iteration (M = 10, b = 4, mnist-mlp) of the bare loop
   (scripts/bare_loop.py) and of the driver with the workers on the device; target driver / bare <= 1.5.
2. ``device_path``: LAQ for 20 iterations with the gradients brought back to the CPU for compression, and with
   compression on the device: the same uploads and theta, bit for bit (the GPU's gradients are the same in both).
3. ``rows``: Table 2's network row, each algorithm for ``--iterations`` iterations, beside the paper's.

``--iterations 5 --device cpu`` checks the script itself on any machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bare_loop import bare_laq_seconds

from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.problem import Problem, build_problem

PAPER_COLUMNS = ("iterations", "uploads", "payload_bits", "test_accuracy")
PAPER = {name: dict(zip(PAPER_COLUMNS, row)) for name, row in {
    "laq": (8000, 31845, 4.05e10, 0.9433), "gd": (8000, 80000, 4.07e11, 0.9433),
    "qgd": (8000, 80000, 1.02e11, 0.9433), "lag": (8000, 29916, 1.52e11, 0.9433)}.items()}


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def on_device(problem: Problem, keep: bool) -> Problem:
    for objective in problem.objectives:
        objective.gradients_on_device = keep
    return problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--iterations", type=int, default=8000)
    parser.add_argument("--ratio-rounds", type=int, default=40, help="at least 3 (the first two are left out)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--evaluate-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("results") / "gpu-table2.json")
    args = parser.parse_args()
    if args.ratio_rounds < 3 or args.iterations < 1:
        parser.error("--ratio-rounds must be >= 3 and --iterations >= 1")
    data_dir = str(Path(args.data_dir).resolve())
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    report = {"command": shlex.join(["python", *sys.argv]),
              "device": device_name, "torch": torch.__version__, "revision": revision(), "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(line: dict) -> None:
        print(json.dumps(line), flush=True)
        args.out.write_text(json.dumps(report, indent=2))

    started = time.perf_counter()
    problem = on_device(build_problem(ProblemConfig(model="mlp", data_dir=data_dir, device=args.device)), True)
    report["build_seconds"] = time.perf_counter() - started

    bare = bare_laq_seconds(problem, args.ratio_rounds, bits=4)
    driver = run_in_process(AlgorithmConfig(bits=4), problem, args.ratio_rounds, evaluate_every=0).column("seconds")
    medians = {"bare": statistics.median(bare[2:]), "driver": statistics.median(driver[2:].tolist())}
    report["ratio"] = {"median_seconds": medians, "driver/bare": medians["driver"] / medians["bare"]}
    save({"ratio": report["ratio"]})

    laq = AlgorithmConfig(algorithm="laq", bits=8)
    on_device(problem, False)
    cpu_compression = run_in_process(laq, problem, 20, evaluate_every=0)
    on_device(problem, True)
    device_compression = run_in_process(laq, problem, 20, evaluate_every=0)
    report["device_path"] = {
        "same_uploads": cpu_compression.column("uploads").tolist() == device_compression.column("uploads").tolist(),
        "same_theta_bits": bool(np.array_equal(cpu_compression.theta.view(np.uint32), device_compression.theta.view(np.uint32))),
        "seconds_cpu_compression": float(cpu_compression.column("seconds")[2:].mean()),
        "seconds_device_compression": float(device_compression.column("seconds")[2:].mean()),
    }
    save({"device_path": report["device_path"]})

    for name in PAPER:
        started = time.perf_counter()
        result = run_in_process(AlgorithmConfig(algorithm=name, bits=8), problem, args.iterations,
                                evaluate_every=args.evaluate_every)
        row = {"algorithm": name, "iterations": args.iterations, "uploads": result.total_uploads,
               "payload_bits": result.total_bits, "test_accuracy": result.records[-1].test_accuracy,
               "train_loss": result.records[-1].train_loss, "seconds": time.perf_counter() - started,
               "paper": PAPER[name]}
        report["rows"].append(row)
        save(row)


if __name__ == "__main__":
    main()
