"""A :class:`~laq_fl.config.ProblemConfig` turned into data, a model and one objective per worker."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from laq_fl.config import ProblemConfig
from laq_fl.data import Dataset, cached_partitions, load_partition, partition_indices
from laq_fl.devices import resolve_device
from laq_fl.models import FlatModel, LocalObjective, evaluate
from laq_fl.tasks import (
    BuiltinTask,
    Task,
    build_task_module,
    check_fit,
    load_task_dataset,
    resolve_task,
)


def task_of(config: ProblemConfig) -> Task:
    """The :class:`~laq_fl.tasks.Task` ``config`` names (its ``task``, else ``<dataset>-<model>``)."""
    return resolve_task(config.task_spec)


def check_problem(config: ProblemConfig) -> Task:
    """What :class:`~laq_fl.config.ProblemConfig` cannot check without I/O: the task resolves (a user's module imports,
    a LIBSVM file parses) and torch sees the device. The ServerApp calls this before it waits for any node; a worker
    meets the same errors when it builds its objective.

    Raises :class:`~laq_fl.errors.ConfigError` naming ``task`` or ``device``.
    """
    task = task_of(config)
    resolve_device(config.device)
    return task


def flat_model(config: ProblemConfig) -> FlatModel:
    """A fresh instance of the task's module, with its flat-vector layout."""
    return FlatModel(build_task_module(task_of(config)))


@functools.lru_cache(maxsize=8)
def task_dataset(task: Task, data_dir: str, seed: int) -> Dataset:
    """The task's data, loaded once per process (the same :class:`Task` object comes back from resolve_task)."""
    return load_task_dataset(task, data_dir, seed)


@functools.lru_cache(maxsize=None)
def _task_partitions(task: Task, config: ProblemConfig) -> tuple[np.ndarray, ...]:
    labels = task_dataset(task, config.data_dir, config.seed).train_labels.numpy()
    return tuple(partition_indices(labels, config.num_workers, config.partition, config.seed, config.dirichlet_alpha,
                                   config.classes_per_partition, config.shards_per_partition))


def _partition(config: ProblemConfig, worker: int) -> tuple[torch.Tensor, torch.Tensor]:
    task = task_of(config)
    if isinstance(task, BuiltinTask):  # the built-in data sets have their own caches (MNIST's shards on disk)
        return load_partition(task.dataset, config.data_dir, config.partition, config.num_workers, worker,
                              config.seed, config.dirichlet_alpha, config.dtype, config.classes_per_partition,
                              config.shards_per_partition)
    if not 0 <= worker < config.num_workers:
        raise ValueError(f"worker index {worker} is outside 0..{config.num_workers - 1}")
    data = task_dataset(task, config.data_dir, config.seed)
    index = torch.from_numpy(_task_partitions(task, config)[worker])
    return data.train_features[index].to(getattr(torch, config.dtype)), data.train_labels[index]


def partition_sizes(config: ProblemConfig) -> list[int]:
    """Each worker's number of training samples under ``config``'s partition (labels only, no features copied).
    Raises ValueError when the partition cannot be made (the server checks this before round 1)."""
    task = task_of(config)
    if isinstance(task, BuiltinTask):
        shards = cached_partitions(task.dataset, config.data_dir, config.partition, config.num_workers, config.seed,
                                    config.dirichlet_alpha, config.classes_per_partition, config.shards_per_partition)
    else:
        shards = _task_partitions(task, config)
    return [len(shard) for shard in shards]


def local_objective(config: ProblemConfig, worker: int, model: FlatModel | None = None) -> LocalObjective:
    """f_m of one worker; its data come from the per-process partition cache."""
    features, labels = _partition(config, worker)
    return LocalObjective(model or flat_model(config), features, labels, config.lam, task_of(config).loss,
                          resolve_device(config.device))


@dataclass
class Problem:
    """Everything a run needs besides the algorithm: model, theta^0, f_m per worker, the test set."""

    config: ProblemConfig
    model: FlatModel
    initial_theta: np.ndarray
    objectives: list[LocalObjective]
    test_features: torch.Tensor
    test_labels: torch.Tensor
    data_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def vector_device(self) -> torch.device | None:
        """Where the workers' rounds and the server's aggregate and step run: the objectives' device when they keep
        their gradients there (:class:`~laq_fl.models.LocalObjective`'s ``gradients_on_device``), else ``None``
        (numpy on the CPU)."""
        devices = {objective.device for objective in self.objectives}
        on_device = self.objectives and all(objective.gradients_on_device for objective in self.objectives)
        return devices.pop() if on_device and len(devices) == 1 else None

    def training_loss(self, theta: np.ndarray) -> float:
        """``f(theta) / M``: the mean of the workers' ``f_m(theta)``."""
        return float(np.mean([objective.loss(theta) for objective in self.objectives]))

    def test_metrics(self, theta: np.ndarray) -> tuple[float, float]:
        """Test cross-entropy and accuracy."""
        return evaluate(self.model, theta, self.test_features, self.test_labels, self.data_loss, self.predict)


def build_problem(config: ProblemConfig, workers: Sequence[int] | None = None) -> Problem:
    """Load (or reuse the cached) data and build f_m for ``workers`` (all by default)."""
    task = task_of(config)
    model = flat_model(config)
    dataset = task_dataset(task, config.data_dir, config.seed)
    check_fit(task, model.module, dataset)
    dtype = getattr(torch, config.dtype)
    indices = range(config.num_workers) if workers is None else workers
    return Problem(
        config=config,
        model=model,
        initial_theta=model.initial_parameters(config.init, config.seed, config.dtype),
        objectives=[local_objective(config, worker, model) for worker in indices],
        test_features=dataset.test_features.to(dtype).to(resolve_device(config.device)),
        test_labels=dataset.test_labels.to(resolve_device(config.device)),
        data_loss=task.loss,
        predict=task.predict,
    )


def test_evaluator(config: ProblemConfig) -> Callable[[np.ndarray], tuple[float, float]]:
    """Test cross-entropy and accuracy of a theta, for centralised evaluation (no training data loaded)."""
    task = task_of(config)
    model = flat_model(config)
    dataset = task_dataset(task, config.data_dir, config.seed)
    check_fit(task, model.module, dataset)
    device = resolve_device(config.device)
    model.module.to(device)
    features = dataset.test_features.to(getattr(torch, config.dtype)).to(device)
    labels = dataset.test_labels.to(device)

    def evaluate_theta(theta: np.ndarray) -> tuple[float, float]:
        return evaluate(model, theta, features, labels, task.loss, task.predict)

    return evaluate_theta
