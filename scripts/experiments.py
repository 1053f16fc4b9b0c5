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
from laq_fl.config import ProblemConfig
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.flower.server import results_path
from laq_fl.problem import build_problem
from laq_fl.run_config import parse_run_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("LAQ_FL_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
DEFAULT_OUT_DIR = REPO_ROOT / "results"


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
    """Run the real ServerApp, strategy and ClientApp through the in-process Grid; return the results rows."""
    settings = parse_run_config(run_config)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    grid = InProcessGrid(client_app, settings.num_clients, run_config)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    run_server(grid, context)
    path = results_path(settings, context.run_id)
    return [json.loads(line) for line in path.read_text().splitlines()]
