"""GD, QGD, LAG and LAQ side by side with the in-process driver (no Flower).

    python scripts/compare_gradient_methods.py --data-dir ../shared/data --iterations 200

Prints, per algorithm: uploads, payload bits, f(theta^K)/M, test accuracy and the time per iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from laq_fl.problem import build_problem
from progress import record_hook, run_progress

DEFAULT_BITS = {"logistic": 4, "mlp": 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("LAQ_FL_DATA_DIR", "data"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--model", choices=["logistic", "mlp"], default="logistic")
    parser.add_argument("--bits", type=int, help="bits for QGD and LAQ (default: 4 logistic, 8 mlp)")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--algorithms", nargs="+", default=["gd", "qgd", "lag", "laq"])
    parser.add_argument("--json", type=Path, help="also write the per-algorithm summary here")
    args = parser.parse_args()

    problem = build_problem(ProblemConfig(model=args.model, data_dir=args.data_dir))
    bits = args.bits or DEFAULT_BITS[args.model]
    print(f"{args.model} on MNIST, M={len(problem.objectives)}, p={problem.size}, {args.iterations} iterations, "
          f"alpha={args.lr}, b={bits}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads")
    header = f"{'algorithm':<9} {'uploads':>8} {'payload bits':>13} {'f/M':>10} {'test acc':>9} {'ms/iter':>8}"
    print(header)
    print("-" * len(header))
    summary = []
    for name in args.algorithms:
        started = time.perf_counter()
        with run_progress(name, args.iterations) as update:
            result = run_in_process(AlgorithmConfig(algorithm=name, bits=bits, lr=args.lr), problem, args.iterations,
                                    on_record=record_hook(update))
        seconds = time.perf_counter() - started
        last = result.records[-1]
        row = {
            "algorithm": name,
            "iterations": args.iterations,
            "uploads": result.total_uploads,
            "payload_bits": result.total_bits,
            "train_loss": last.train_loss,
            "test_accuracy": last.test_accuracy,
            "ms_per_iteration": 1e3 * seconds / max(args.iterations, 1),
        }
        summary.append(row)
        print(f"{name:<9} {row['uploads']:>8} {row['payload_bits']:>13.3e} {row['train_loss']:>10.6f} "
              f"{row['test_accuracy']:>9.4f} {row['ms_per_iteration']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
