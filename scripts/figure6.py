"""The paper's Figure 6: test accuracy against transmitted bits for GD, QGD, LAG and LAQ, on MNIST and ijcnn1.

    python scripts/figure6.py [--iterations 1000] [--data-dir DIR] [--datasets mnist ijcnn1]

Runs the in-process driver (bit-identical to the Flower app) for each data set and algorithm, evaluating every
``--evaluate-every`` iterations, and writes ``results/figure6.json`` (the curves, the command, the machine and the
revision) and ``docs/figure6.png``. The third data set of the paper's figure, covtype, is not on these machines;
with its LIBSVM file, add it as ``--datasets covtype=/abs/path/covtype.libsvm.binary.bz2``.

Settings: M = 10 contiguous shards, D = 10, xi_d = 0.8/D, t_bar = 100, b = 4 bits for QGD and LAQ, Glorot start.
MNIST is the paper's logistic regression (lambda = 0.01, alpha = 0.02). The paper gives no step size or
regulariser for ijcnn1; we use binary logistic regression with lambda = 0.001 and alpha = 0.5 (the gradient of the
sum of the ten local objectives has Lipschitz constant about 3 here, so alpha < 2/3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, REPO_ROOT, git_revision, machine  # noqa: E402
from progress import record_hook, run_progress  # noqa: E402

from laq_fl.config import AlgorithmConfig, ProblemConfig  # noqa: E402
from laq_fl.driver import run_in_process  # noqa: E402
from laq_fl.problem import build_problem  # noqa: E402

ALGORITHMS = {"gd": ("GD", "tab:blue"), "qgd": ("QGD", "tab:orange"), "lag": ("LAG", "tab:green"),
              "laq": ("LAQ", "tab:red")}
DATASETS = {
    "mnist": {"task": "mnist-logistic", "lam": 0.01, "lr": 0.02, "title": "MNIST, logistic regression"},
    "ijcnn1": {"task": "ijcnn1-logistic", "lam": 0.001, "lr": 0.5, "title": "ijcnn1, logistic regression"},
}
BITS = 4


def dataset_settings(spec: str) -> tuple[str, dict]:
    """``name`` of :data:`DATASETS`, or ``name=/abs/libsvm/file`` (binary logistic regression, ijcnn1's settings)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, {**DATASETS["ijcnn1"], "task": f"libsvm:{path}", "title": f"{name}, logistic regression"}
    if spec not in DATASETS:
        raise SystemExit(f"unknown data set {spec!r}; expected {', '.join(DATASETS)} or name=/abs/libsvm/file")
    return spec, DATASETS[spec]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--evaluate-every", type=int, default=10)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT_DIR) / "figure6.json")
    parser.add_argument("--figure", type=Path, default=REPO_ROOT / "docs" / "figure6.png")
    args = parser.parse_args()

    report: dict = {"command": "python scripts/figure6.py " + f"--iterations {args.iterations} --datasets "
                    + " ".join(args.datasets), "machine": machine(), "revision": git_revision(), "bits": BITS,
                    "iterations": args.iterations, "datasets": {}}
    for spec in args.datasets:
        name, settings = dataset_settings(spec)
        problem = build_problem(ProblemConfig(task=settings["task"], data_dir=str(Path(args.data_dir).resolve()),
                                              lam=settings["lam"], device="cpu"))
        curves = {}
        for algorithm in ALGORITHMS:
            started = time.perf_counter()
            with run_progress(f"{name} {algorithm}", args.iterations) as update:
                result = run_in_process(AlgorithmConfig(algorithm=algorithm, bits=BITS, lr=settings["lr"]), problem,
                                        args.iterations, evaluate_every=args.evaluate_every,
                                        on_record=record_hook(update))
            bits = result.column("payload_bits").cumsum()
            evaluated = [(int(b), record.test_accuracy, record.iteration) for b, record in zip(bits, result.records)
                         if record.test_accuracy == record.test_accuracy]
            curves[algorithm] = {"bits": [e[0] for e in evaluated], "test_accuracy": [e[1] for e in evaluated],
                                 "iteration": [e[2] for e in evaluated], "uploads": result.total_uploads,
                                 "total_bits": result.total_bits, "final_accuracy": result.records[-1].test_accuracy,
                                 "seconds": time.perf_counter() - started}
            print(f"{name:7s} {algorithm:4s} uploads {result.total_uploads:6d}  bits {result.total_bits:.3e}  "
                  f"test accuracy {result.records[-1].test_accuracy:.4f}", flush=True)
        report["datasets"][name] = {"settings": settings, "curves": curves}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    figure, axes = plt.subplots(1, len(report["datasets"]), figsize=(5.5 * len(report["datasets"]), 4.2),
                                squeeze=False)
    for axis, (name, data) in zip(axes[0], report["datasets"].items()):
        for algorithm, curve in data["curves"].items():
            label, colour = ALGORITHMS[algorithm]
            axis.plot(curve["bits"], curve["test_accuracy"], label=label, color=colour)
        axis.set_xscale("log")
        axis.set_xlabel("transmitted bits (uplink payload, cumulative)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{data['settings']['title']}\nalpha = {data['settings']['lr']}, lambda = "
                       f"{data['settings']['lam']}, b = {BITS}, {args.iterations} iterations", fontsize=9)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.text(0.01, 0.01, f"{report['command']} | revision {report['revision']} | {report['machine']}", fontsize=6)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=120)
    print(f"wrote {args.figure} and {args.out}")


if __name__ == "__main__":
    main()
