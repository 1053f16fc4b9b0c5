"""Helpers shared by the experiment scripts: the optimum f*, Flower runs through the in-process Grid, machine info."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, RecordDict

from client_app import app as client_app
from progress import row_hook, run_progress
from laq_fl.config import ProblemConfig
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.flower.serverapp import results_path
from laq_fl.problem import build_problem
from laq_fl.results import read_results
from laq_fl.run_config import parse_run_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("LAQ_FL_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
DEFAULT_OUT_DIR = REPO_ROOT / "results"

# The paper's Tables 2 and 3 (iterations, uploads, bits, test accuracy), by results-file stem.
PAPER = {
    "table2-logistic": {"laq": (2673, 620, 1.95e7, 0.9082), "gd": (2820, 28200, 7.08e9, 0.9082),
                        "qgd": (2805, 28050, 8.81e8, 0.9082), "lag": (2659, 2382, 5.98e8, 0.9082)},
    "table2-mlp": {"laq": (8000, 31845, 4.05e10, 0.9433), "gd": (8000, 80000, 4.07e11, 0.9433),
                   "qgd": (8000, 80000, 1.02e11, 0.9433), "lag": (8000, 29916, 1.52e11, 0.9433)},
    "table3-logistic": {"slaq": (1000, 8255, 1.94e8, 0.9018), "sgd": (1000, 10000, 2.51e9, 0.9021),
                        "qsgd": (1000, 10000, 7.51e8, 0.9021), "ssgd": (1000, 10000, 1.26e9, 0.9013)},
    "table3-mlp": {"slaq": (1500, 11192, 1.42e10, 0.9107), "sgd": (1500, 15000, 7.63e10, 0.9100),
                   "qsgd": (1500, 15000, 2.03e10, 0.9100), "ssgd": (1500, 15000, 3.82e10, 0.9104)},
}


def machine() -> str:
    """One line naming the machine and software the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}"
    )


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def optimum(problem: ProblemConfig, cache_dir: Path, gradient_tolerance: float = 1e-9) -> dict:
    """f*/M and theta* of the run's objective, by L-BFGS in float64, cached by the problem's settings.

    The objective is f/M = mean_m f_m (each f_m: mean cross-entropy + (lam/2)||theta||^2).
    """
    from scipy.optimize import minimize  # only the scripts need scipy

    float64 = ProblemConfig(**{**asdict(problem), "dtype": "float64", "init": "zeros"})
    key = hashlib.sha256(json.dumps(asdict(float64), sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"optimum-{float64.model}-{key}.npz"
    if path.exists():
        cached = np.load(path)
        return {"loss": float(cached["loss"]), "theta": cached["theta"], "grad_norm": float(cached["grad_norm"]), "cached": True}

    solved = build_problem(float64)
    num_workers = len(solved.objectives)

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        total_loss, total_grad = 0.0, np.zeros_like(theta)
        for objective in solved.objectives:
            loss, grad = objective.loss_and_gradient(theta)
            total_loss += loss
            total_grad += grad
        return total_loss / num_workers, total_grad / num_workers

    started = time.perf_counter()
    result = minimize(
        loss_and_gradient,
        solved.initial_theta,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxcor": 50, "gtol": gradient_tolerance, "ftol": 1e-16},
    )
    loss, grad = loss_and_gradient(result.x)
    grad_norm = float(np.linalg.norm(grad))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, loss=loss, theta=result.x, grad_norm=grad_norm)
    logging.getLogger(__name__).info(
        "f*/M = %.12f after %d L-BFGS iterations, |grad| = %.2e, %.0f s", loss, result.nit, grad_norm, time.perf_counter() - started
    )
    return {"loss": loss, "theta": result.x, "grad_norm": grad_norm, "cached": False}


def run_flower_app(run_config: dict) -> list[dict]:
    """Run the real ServerApp, strategy and ClientApp through the in-process Grid (a progress line on a terminal);
    return the results rows."""
    settings = parse_run_config(run_config)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    grid = InProcessGrid(client_app, settings.num_clients, run_config)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    with run_progress(settings.name(context.run_id), settings.rounds) as update:
        run_server(grid, context, on_row=row_hook(update))
    path = results_path(settings, context.run_id)
    return read_results(path)[0]


def flower_table_row(run_config: dict, iterations: int, reuse: bool = False) -> tuple[dict, list[dict]]:
    """Run the Flower app and read the table's columns after ``iterations`` iterations from its results file.

    With ``reuse``, a complete results file of an earlier run with the same name is read instead of running again.
    """
    started = time.perf_counter()
    path = Path(run_config["out-dir"]) / f"{run_config['run-name']}.jsonl"
    existing = read_results(path)[0] if reuse and path.exists() else []
    if len(existing) == run_config["rounds"] + 1 and existing[-1]["algorithm"] == run_config["algorithm"]:
        rows = existing
        started -= rows[-1]["wall-seconds"]  # report the earlier run's wall time
    else:
        rows = run_flower_app(run_config)
    at = rows[iterations]  # cumulative counts after K iterations; test accuracy of theta^K
    row = {
        "algorithm": run_config["algorithm"],
        "iterations": iterations,
        "uploads": at["uploads-cum"],
        "payload_bits": at["payload-bits-cum"],
        "uplink_bytes": at["uplink-bytes-cum"],
        "downlink_bytes": at["downlink-bytes-cum"],
        "test_accuracy": at["test-accuracy"],
        "train_loss": at["train-loss"],
        "seconds": time.perf_counter() - started,
        "results_file": f"runs/{run_config['run-name']}.jsonl",
    }
    return row, rows


def markdown_table(rows: list[dict], paper: dict[str, tuple], reference: str, lazy: str) -> str:
    """Our numbers beside the paper's (iterations / uploads / bits / accuracy), and ``lazy``'s share of ``reference``."""
    lines = [
        "| algorithm | iterations | uploads | payload bits | uplink bytes | downlink bytes | test acc | paper: iterations / uploads / bits / acc |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_name = {row["algorithm"]: row for row in rows}
    for name, row in by_name.items():
        theirs = " / ".join(f"{v:,}" if isinstance(v, int) else (f"{v:.3g}" if v > 1 else f"{v}") for v in paper[name]) if name in paper else "—"
        lines.append(
            f"| {name.upper()} | {row['iterations']:,} | {row['uploads']:,} | {row['payload_bits']:.3g} | {row['uplink_bytes']:.3g} | "
            f"{row['downlink_bytes']:.3g} | {row['test_accuracy']:.4f} | {theirs} |"
        )
    if lazy in by_name and reference in by_name:
        ours, base = by_name[lazy], by_name[reference]
        line = (f"\n{lazy.upper()} / {reference.upper()}: uploads {ours['uploads'] / base['uploads']:.2%}, "
                f"payload bits {ours['payload_bits'] / base['payload_bits']:.3%}, "
                f"measured uplink bytes {ours['uplink_bytes'] / base['uplink_bytes']:.3%}")
        if lazy in paper and reference in paper:
            line += (f" (paper: uploads {paper[lazy][1] / paper[reference][1]:.2%}, "
                     f"bits {paper[lazy][2] / paper[reference][2]:.3%})")
        lines.append(line)
    return "\n".join(lines)
