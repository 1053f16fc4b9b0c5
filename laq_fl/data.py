"""Datasets and partitions, loaded once per process and cached.

* ``mnist``: through ``torchvision.datasets.MNIST(root=data_dir, download=True)``; pixels / 255,
  flattened to 784 features, no normalisation (the authors' setup).
* ``synthetic``: a seeded, MNIST-shaped linear-teacher problem for runs with no download.

Partitions of the training set over M workers:

* ``contiguous`` (the paper): worker m holds samples ``[m N / M, (m+1) N / M)`` in the original order;
* ``iid``: a seeded shuffle cut into M near-equal shards;
* ``dirichlet``: label skew; each class is split over the workers by proportions drawn from
  ``Dirichlet(alpha 1_M)`` (smaller alpha, more skew).

A worker's MNIST shard is also kept on disk (``$LAQ_FL_CACHE_DIR``, default ``~/.cache/laq-fl/partitions``): a
deployed SuperNode runs each message in a new process, which would otherwise import torchvision and parse the IDX
files (2-4 s) every round. The file is named after everything the shard depends on (the raw files' sizes and
modification times included), written atomically, and skipped silently when the folder is not writable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NUM_FEATURES = 784
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are absent and could not be downloaded."""


@dataclass(frozen=True)
class Dataset:
    """Features as float tensors of shape (N, 784), labels as int64 tensors of shape (N,)."""

    name: str
    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=4)
def load_mnist(data_dir: str) -> Dataset:
    """MNIST from ``data_dir`` (files under ``data_dir/MNIST/raw/``), downloading them if absent."""
    from torchvision.datasets import MNIST  # deferred: torchvision's import costs about a second

    root = Path(data_dir).expanduser().resolve()
    try:
        train = MNIST(root=str(root), train=True, download=True)
        test = MNIST(root=str(root), train=False, download=True)
    except Exception as exc:
        raise DatasetNotFoundError(
            f"MNIST is not in {root} and could not be downloaded ({exc.__class__.__name__}). "
            f"Put the four IDX files {', '.join(MNIST_RAW_FILES)} under {root / 'MNIST' / 'raw'}, "
            "or point the data directory (LAQ_FL_DATA_DIR, or the run config's data-dir) at a folder that has them."
        ) from exc
    return Dataset(
        name="mnist",
        train_features=_to_features(train.data),
        train_labels=train.targets.to(torch.int64),
        test_features=_to_features(test.data),
        test_labels=test.targets.to(torch.int64),
    )


def _to_features(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)


@functools.lru_cache(maxsize=4)
def make_synthetic(seed: int = 0, num_train: int = 6000, num_test: int = 1000) -> Dataset:
    """A seeded MNIST-shaped problem: sparse features in [0, 1], labels from a noisy linear teacher."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(NUM_FEATURES, NUM_CLASSES))
    total = num_train + num_test
    features = rng.random((total, NUM_FEATURES)) * (rng.random((total, NUM_FEATURES)) < 0.2)
    scores = features @ teacher + rng.gumbel(size=(total, NUM_CLASSES))
    labels = scores.argmax(axis=1)
    features_t = torch.from_numpy(features.astype(np.float32))
    labels_t = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name="synthetic",
        train_features=features_t[:num_train],
        train_labels=labels_t[:num_train],
        test_features=features_t[num_train:],
        test_labels=labels_t[num_train:],
    )


def load_dataset(name: str, data_dir: str, seed: int = 0) -> Dataset:
    """The named dataset (``"mnist"`` or ``"synthetic"``), cached per process."""
    if name == "mnist":
        return load_mnist(str(data_dir))
    if name == "synthetic":
        return make_synthetic(seed)
    raise ValueError(f"unknown dataset {name!r}; expected 'mnist' or 'synthetic'")


def partition_indices(
    labels: np.ndarray, num_workers: int, scheme: str, seed: int = 0, alpha: float = 0.5
) -> list[np.ndarray]:
    """Sample indices of each worker's shard; the shards are disjoint and cover every sample."""
    num_samples = len(labels)
    if num_workers < 1 or num_workers > num_samples:
        raise ValueError(f"cannot split {num_samples} samples over {num_workers} workers")
    if scheme == "contiguous":
        bounds = [m * num_samples // num_workers for m in range(num_workers + 1)]
        return [np.arange(bounds[m], bounds[m + 1]) for m in range(num_workers)]
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(shard) for shard in np.array_split(rng.permutation(num_samples), num_workers)]
    if scheme == "dirichlet":
        return _dirichlet_partition(np.asarray(labels), num_workers, rng, alpha)
    raise ValueError(f"unknown partition {scheme!r}; expected 'contiguous', 'iid' or 'dirichlet'")


def _dirichlet_partition(
    labels: np.ndarray, num_workers: int, rng: np.random.Generator, alpha: float
) -> list[np.ndarray]:
    shards: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_workers, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for worker, part in enumerate(np.split(members, cuts)):
            shards[worker].append(part)
    result = [np.sort(np.concatenate(parts)) for parts in shards]
    # Every worker needs at least one sample for f_m to exist: hand the empty ones a sample each
    # from the largest shard, which keeps the partition disjoint and seeded.
    for worker, shard in enumerate(result):
        if shard.size == 0:
            donor = int(np.argmax([s.size for s in result]))
            result[worker], result[donor] = result[donor][-1:], result[donor][:-1]
    return result


@functools.lru_cache(maxsize=None)
def _cached_partitions(
    dataset: str, data_dir: str, scheme: str, num_workers: int, seed: int, alpha: float
) -> tuple[np.ndarray, ...]:
    labels = load_dataset(dataset, data_dir, seed).train_labels.numpy()
    return tuple(partition_indices(labels, num_workers, scheme, seed, alpha))


@functools.lru_cache(maxsize=None)
def load_partition(
    dataset: str,
    data_dir: str,
    scheme: str,
    num_workers: int,
    worker: int,
    seed: int = 0,
    alpha: float = 0.5,
    dtype: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of one worker's shard, computed once per process and cached (MNIST also on disk)."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker index {worker} is outside 0..{num_workers - 1}")
    cached = _shard_file(dataset, data_dir, scheme, num_workers, worker, seed, alpha)
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as stored:
                features, labels = torch.from_numpy(stored["features"]), torch.from_numpy(stored["labels"])
            return features.to(getattr(torch, dtype)), labels
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file: rebuild it
    features, labels = _compute_partition(dataset, data_dir, scheme, num_workers, worker, seed, alpha)
    if cached is not None:
        _write_shard(cached, features, labels)
    return features.to(getattr(torch, dtype)), labels


PARTITION_CACHE_ENV = "LAQ_FL_CACHE_DIR"


def _shard_file(dataset: str, data_dir: str, scheme: str, num_workers: int, worker: int, seed: int,
                alpha: float) -> Path | None:
    if dataset != "mnist":
        return None  # the synthetic set is generated in milliseconds
    raw = Path(data_dir).expanduser().resolve() / "MNIST" / "raw"
    sources = []
    for name in MNIST_RAW_FILES[:2]:
        path = raw / name
        if not path.is_file():
            return None
        stat = path.stat()
        sources.append([str(path), stat.st_size, stat.st_mtime_ns])
    key = json.dumps({"sources": sources, "scheme": scheme, "workers": num_workers, "worker": worker, "seed": seed,
                      "alpha": alpha, "format": 1}, sort_keys=True)
    folder = Path(os.environ.get(PARTITION_CACHE_ENV) or "~/.cache/laq-fl/partitions").expanduser()
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return folder / f"mnist-{scheme}-{worker}of{num_workers}-{digest}.npz"


def _write_shard(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as file:
            np.savez(file, features=features.numpy(), labels=labels.numpy())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


def _compute_partition(dataset: str, data_dir: str, scheme: str, num_workers: int, worker: int, seed: int,
                       alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(dataset, data_dir, seed)
    index = torch.from_numpy(_cached_partitions(dataset, data_dir, scheme, num_workers, seed, alpha)[worker])
    return data.train_features[index], data.train_labels[index]


def minibatch_indices(num_samples: int, batch_size: int, seed: int, worker: int, iteration: int) -> np.ndarray:
    """The minibatch of worker ``worker`` at ``iteration`` (SGD, SLAQ): seeded, so every runner draws the same."""
    rng = np.random.default_rng([seed, worker, iteration])
    if batch_size >= num_samples:
        return np.arange(num_samples)
    return np.sort(rng.choice(num_samples, size=batch_size, replace=False))
