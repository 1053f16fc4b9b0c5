"""The Flower run config (``[tool.flwr.app.config]``, kebab-case keys) parsed once into frozen settings.

Every key lives here. Parsing checks types and values and raises :class:`~laq_fl.errors.ConfigError`
naming the key and what it allows, so a bad run stops before round 1.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laq_fl.config import AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.skip_rules import default_xi

DATA_DIR_ENV = "LAQ_FL_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/laq-fl/data"
DEFAULT_OUT_DIR = "~/laq-fl-runs"

MAX_DIFFERENCES = 10_000
MAX_RUN_NAME_BYTES = 200

# key -> (type, default). Defaults: the paper's LAQ logistic-regression setting on MNIST, 10 clients.
RUN_CONFIG_SCHEMA: dict[str, tuple[type, Any]] = {
    "algorithm": (str, "laq"),
    "task": (str, ""),
    "model": (str, "logistic"),
    "dataset": (str, "mnist"),
    "partition": (str, "contiguous"),
    "dirichlet-alpha": (float, 0.5),
    "classes-per-partition": (int, 2),
    "shards-per-partition": (int, 2),
    "device": (str, "auto"),
    "num-clients": (int, 10),
    "rounds": (int, 300),
    "bits": (int, 4),
    "lr": (float, 0.02),
    "xi-sum": (float, 0.8),
    "D": (int, 10),
    "xi-warmup": (bool, False),
    "t-bar": (int, 100),
    "batch-size": (int, 500),
    "density": (float, 0.5),
    "downlink-bits": (int, 32),
    "smoothness": (float, 0.0),
    "report-every": (int, 10),
    "lambda": (float, 0.01),
    "seed": (int, 0),
    "init": (str, "glorot"),
    "dtype": (str, "float32"),
    "data-dir": (str, ""),
    "out-dir": (str, ""),
    "run-name": (str, ""),
    "round-timeout": (float, 600.0),
    "node-wait-timeout": (float, 120.0),
    "checkpoint-every": (int, 10),
    "resume": (bool, False),
}

RESUMABLE_CHANGES = frozenset(
    {"rounds", "resume", "round-timeout", "node-wait-timeout", "checkpoint-every", "data-dir", "report-every", "run-name"}
)
"""Keys a resumed run may set differently from the checkpoint's run (they change no iterate; ``run-name`` only names
the checkpoint, so an unnamed run resumes as ``run-name = "<algorithm>-<model>-<run id>"``)."""

# Fields of the library's configs -> the run-config key a user sets.
_FIELD_TO_KEY = {
    "algorithm": "algorithm",
    "bits": "bits",
    "lr": "lr",
    "xi": "xi-sum",
    "t_bar": "t-bar",
    "batch_size": "batch-size",
    "density": "density",
    "xi_warmup": "xi-warmup",
    "downlink_bits": "downlink-bits",
    "smoothness": "smoothness",
    "model": "model",
    "dataset": "dataset",
    "partition": "partition",
    "num_workers": "num-clients",
    "lam": "lambda",
    "init": "init",
    "seed": "seed",
    "dtype": "dtype",
    "data_dir": "data-dir",
    "dirichlet_alpha": "dirichlet-alpha",
    "classes_per_partition": "classes-per-partition",
    "shards_per_partition": "shards-per-partition",
    "device": "device",
}


@dataclass(frozen=True)
class RunSettings:
    """Everything a Flower run of the LAQ family needs, validated."""

    algorithm: AlgorithmConfig
    problem: ProblemConfig
    rounds: int
    out_dir: str
    run_name: str
    round_timeout: float
    node_wait_timeout: float
    report_every: int = 10
    checkpoint_every: int = 10
    resume: bool = False
    values: tuple = ()
    """Every key with its value (defaults included), sorted: what a checkpoint records of its run."""

    @property
    def num_clients(self) -> int:
        return self.problem.num_workers

    def name(self, run_id: int) -> str:
        """``run-name``, else ``<algorithm>-<model>-<run id>`` (with a ``task``: ``<algorithm>-<task>-<run id>``,
        the task spec's characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``-``)."""
        if self.run_name:
            return self.run_name
        what = re.sub(r"[^A-Za-z0-9._-]+", "-", self.problem.task) if self.problem.task else self.problem.model
        return f"{self.algorithm.algorithm}-{what}-{run_id}"

    def checkpoint_path(self, run_id: int) -> Path:
        """``<out-dir>/checkpoints/<name>.npz`` (:meth:`name`)."""
        return Path(self.out_dir) / "checkpoints" / f"{self.name(run_id)}.npz"


def _typed(key: str, value: Any) -> Any:
    expected, _ = RUN_CONFIG_SCHEMA[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ConfigError(key, f"must be {expected.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _absolute_dir(key: str, value: str, fallback: str) -> str:
    path = Path(os.path.expanduser(value or fallback))
    if not path.is_absolute():
        raise ConfigError(
            key, f"must be an absolute path (the apps run in the SuperLink's working directory), got {value!r}"
        )
    return str(path)


def parse_run_config(run_config: Mapping[str, Any]) -> RunSettings:
    """Validate ``run_config`` and build :class:`RunSettings`; missing keys take their defaults."""
    unknown = sorted(set(run_config) - set(RUN_CONFIG_SCHEMA))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key; known keys are {', '.join(RUN_CONFIG_SCHEMA)}")
    values = {key: _typed(key, run_config.get(key, default)) for key, (_, default) in RUN_CONFIG_SCHEMA.items()}

    if not 1 <= values["D"] <= MAX_DIFFERENCES:
        raise ConfigError("D", f"must be an integer in 1..{MAX_DIFFERENCES} (the number of parameter differences in "
                          f"rule (7a); the paper's is 10), got {values['D']}")
    for key in ("rounds",):
        if values[key] < 1:
            raise ConfigError(key, f"must be an integer >= 1, got {values[key]}")
    if values["report-every"] < 0:
        raise ConfigError("report-every", f"must be an integer >= 0 (0: losses only with uploads), got {values['report-every']}")
    for key in ("round-timeout", "node-wait-timeout"):
        if not math.isfinite(values[key]) or not values[key] > 0:
            raise ConfigError(key, f"must be a finite number of seconds > 0, got {values[key]}")
    if values["checkpoint-every"] < 0:
        raise ConfigError("checkpoint-every", f"must be an integer >= 0 (0: no checkpoints), got {values['checkpoint-every']}")
    name = values["run-name"]
    if name and (name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise ConfigError("run-name", f"must be a plain file name (no folders or control characters; out-dir says "
                          f"where), got {name!r}")
    if len(os.fsencode(name)) > MAX_RUN_NAME_BYTES:
        raise ConfigError("run-name", f"is {len(os.fsencode(name))} bytes; at most {MAX_RUN_NAME_BYTES} (file names "
                          "hold 255 bytes, and the checkpoint's temporary file adds to it)")
    if values["resume"] and not values["run-name"]:
        raise ConfigError("resume", "needs run-name: the checkpoint to continue is <out-dir>/checkpoints/<run-name>.npz "
                          "(an unnamed run's is <algorithm>-<model>-<run id>.npz: pass that name)")
    # A relative $LAQ_FL_DATA_DIR comes from the user's shell, so it resolves against the working directory;
    # only the run config's own data-dir must be absolute (the apps' working directory is the SuperLink's).
    from_env = os.environ.get(DATA_DIR_ENV)
    fallback = os.path.abspath(os.path.expanduser(from_env)) if from_env else DEFAULT_DATA_DIR
    data_dir = _absolute_dir("data-dir", values["data-dir"], fallback)
    out_dir = _absolute_dir("out-dir", values["out-dir"], DEFAULT_OUT_DIR)

    try:
        algorithm = AlgorithmConfig(
            algorithm=values["algorithm"],
            bits=values["bits"],
            lr=values["lr"],
            xi=_xi(values["xi-sum"], values["D"]),
            t_bar=values["t-bar"],
            batch_size=values["batch-size"],
            density=values["density"],
            xi_warmup=values["xi-warmup"],
            downlink_bits=values["downlink-bits"],
            smoothness=values["smoothness"],
        )
        problem = ProblemConfig(
            model=values["model"],
            dataset=values["dataset"],
            partition=values["partition"],
            num_workers=values["num-clients"],
            lam=values["lambda"],
            init=values["init"],
            seed=values["seed"],
            dtype=values["dtype"],
            data_dir=data_dir,
            dirichlet_alpha=values["dirichlet-alpha"],
            classes_per_partition=values["classes-per-partition"],
            shards_per_partition=values["shards-per-partition"],
            device=values["device"],
            task=values["task"],
        )
    except ConfigError as error:
        key = _FIELD_TO_KEY.get(error.key, error.key)
        raise ConfigError(key, str(error).split(": ", 1)[1]) from None
    curvature = values["lambda"] * values["num-clients"]
    if values["lr"] * curvature >= 2:
        # The step sums the M workers' gradients, each with its own lambda theta: the regulariser alone has curvature
        # M lambda, and gradient descent on it diverges once lr * M * lambda >= 2.
        raise ConfigError(
            "lambda", f"lr * lambda * num-clients = {values['lr'] * curvature:.3g} >= 2: the step sums the workers' "
            f"gradients, so the iteration diverges on the (lambda/2)||theta||^2 terms alone (lr = {values['lr']}, "
            f"lambda = {values['lambda']}, num-clients = {values['num-clients']}); lower lr or lambda"
        )
    return RunSettings(
        algorithm=algorithm,
        problem=problem,
        rounds=values["rounds"],
        out_dir=out_dir,
        run_name=values["run-name"],
        round_timeout=values["round-timeout"],
        node_wait_timeout=values["node-wait-timeout"],
        report_every=values["report-every"],
        checkpoint_every=values["checkpoint-every"],
        resume=values["resume"],
        values=tuple(sorted(values.items())),
    )


def _xi(total: float, num_differences: int) -> tuple[float, ...]:
    if total < 0:
        raise ConfigError("xi-sum", f"must be >= 0 (xi_d = xi-sum / D), got {total}")
    return default_xi(num_differences, total)
