"""A :class:`~laq_fl.config.ProblemConfig` turned into data, a model and one objective per worker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from laq_fl.config import ProblemConfig
from laq_fl.data import load_dataset, load_partition
from laq_fl.models import FlatModel, LocalObjective, evaluate


def local_objective(config: ProblemConfig, worker: int, model: FlatModel | None = None) -> LocalObjective:
    """f_m of one worker; its data come from the per-process partition cache."""
    features, labels = load_partition(
        config.dataset,
        config.data_dir,
        config.partition,
        config.num_workers,
        worker,
        config.seed,
        config.dirichlet_alpha,
        config.dtype,
    )
    return LocalObjective(model or FlatModel.named(config.model), features, labels, config.lam)


@dataclass
class Problem:
    """Everything a run needs besides the algorithm: model, theta^0, f_m per worker, the test set."""

    config: ProblemConfig
    model: FlatModel
    initial_theta: np.ndarray
    objectives: list[LocalObjective]
    test_features: torch.Tensor
    test_labels: torch.Tensor

    @property
    def size(self) -> int:
        return self.model.size

    def training_loss(self, theta: np.ndarray) -> float:
        """``f(theta) / M``: the mean of the workers' ``f_m(theta)``."""
        return float(np.mean([objective.loss(theta) for objective in self.objectives]))

    def test_metrics(self, theta: np.ndarray) -> tuple[float, float]:
        """Test cross-entropy and accuracy."""
        return evaluate(self.model, theta, self.test_features, self.test_labels)


def build_problem(config: ProblemConfig, workers: Sequence[int] | None = None) -> Problem:
    """Load (or reuse the cached) data and build f_m for ``workers`` (all by default)."""
    model = FlatModel.named(config.model)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    dtype = getattr(torch, config.dtype)
    indices = range(config.num_workers) if workers is None else workers
    return Problem(
        config=config,
        model=model,
        initial_theta=model.initial_parameters(config.init, config.seed, config.dtype),
        objectives=[local_objective(config, worker, model) for worker in indices],
        test_features=dataset.test_features.to(dtype),
        test_labels=dataset.test_labels,
    )


def test_evaluator(config: ProblemConfig) -> Callable[[np.ndarray], tuple[float, float]]:
    """Test cross-entropy and accuracy of a theta, for centralised evaluation (no training data loaded)."""
    model = FlatModel.named(config.model)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    features = dataset.test_features.to(getattr(torch, config.dtype))

    def evaluate_theta(theta: np.ndarray) -> tuple[float, float]:
        return evaluate(model, theta, features, dataset.test_labels)

    return evaluate_theta
