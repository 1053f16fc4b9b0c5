"""Table 2's network row at the paper's 8,000 iterations (GD, QGD, LAG, LAQ; MLP 784-200-10, b = 8) on a GPU.

    python scripts/gpu_table2.py --data-dir DIR [--iterations 8000] [--device cuda] [--out results/gpu-table2.json]

Prepared for a machine with an NVIDIA GPU and torch, torchvision and numpy (no Flower needed: it runs the
in-process driver, which the Flower app equals bit for bit on one device). Writes, per algorithm, the iterations,
uploads, payload bits and final test accuracy, beside the paper's row, and the seconds it took; with
``--iterations 5 --device cpu`` it checks itself on any machine. Results wait for a GPU: none was lent to the
sessions so far.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.problem import build_problem

PAPER = {"gd": (8000, 80000, 4.07e11, 0.9433), "qgd": (8000, 80000, 1.02e11, 0.9433),
         "lag": (8000, 29916, 1.52e11, 0.9433), "laq": (8000, 31845, 4.05e10, 0.9433)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--iterations", type=int, default=8000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--evaluate-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("results") / "gpu-table2.json")
    args = parser.parse_args()

    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        revision = "unknown"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    report = {"command": f"python scripts/gpu_table2.py --iterations {args.iterations} --device {args.device}",
              "device": device_name, "torch": torch.__version__, "revision": revision, "rows": []}
    problem = build_problem(ProblemConfig(model="mlp", data_dir=str(Path(args.data_dir).resolve()), device=args.device))
    for name in PAPER:
        started = time.perf_counter()
        result = run_in_process(AlgorithmConfig(algorithm=name, bits=8), problem, args.iterations,
                                evaluate_every=args.evaluate_every)
        row = {"algorithm": name, "iterations": args.iterations, "uploads": result.total_uploads,
               "payload_bits": result.total_bits, "test_accuracy": result.records[-1].test_accuracy,
               "seconds": time.perf_counter() - started, "paper": PAPER[name]}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
