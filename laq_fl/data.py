"""Datasets and partitions, loaded once per process and cached.

* ``mnist``: through ``torchvision.datasets.MNIST(root=data_dir, download=True)``; pixels / 255,
  flattened to 784 features, no normalisation (the authors' setup).
* ``synthetic``: a seeded, MNIST-shaped linear-teacher problem for runs with no download.

Partitions of the training set over M workers (:func:`partition_indices`): ``contiguous`` (the paper: worker m
holds samples ``[m N / M, (m+1) N / M)`` in the original order), and Flower Datasets' partitioners ``iid``,
``dirichlet``, ``pathological`` and ``shard`` applied to an in-memory table of the labels.

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

from laq_fl.errors import DatasetNotFoundError

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NUM_FEATURES = 784
NUM_CLASSES = 10


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
            "or point the data directory at a folder that has them: the run config's data-dir (or LAQ_FL_DATA_DIR, "
            "which the run config reads), or ProblemConfig(data_dir=...) in the library."
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


PARTITIONS = ("contiguous", "iid", "dirichlet", "pathological", "shard")


def partition_indices(
    labels: np.ndarray, num_workers: int, scheme: str, seed: int = 0, alpha: float = 0.5,
    classes_per_partition: int = 2, shards_per_partition: int = 2,
) -> list[np.ndarray]:
    """Sorted sample indices (int64) of each worker's shard: disjoint; they cover every sample except where a
    pathological partition leaves classes out (Flower Datasets warns then).

    ``contiguous`` is the paper's split (worker m: samples [m N / M, (m+1) N / M)); the others are Flower Datasets'
    partitioners on an in-memory table of the labels (nothing is downloaded): ``iid`` (a seeded shuffle, then
    ``IidPartitioner``), ``dirichlet`` (``DirichletPartitioner``, label skew ``alpha``), ``pathological``
    (``PathologicalPartitioner``, ``classes_per_partition`` classes each) and ``shard`` (``ShardPartitioner``,
    ``shards_per_partition`` label-sorted shards each). Raises ValueError for an unknown scheme, more workers than
    samples, or a split that leaves a worker without samples.
    """
    num_samples = len(labels)
    if num_workers < 1 or num_workers > num_samples:
        raise ValueError(f"cannot split {num_samples} samples over {num_workers} workers")
    if scheme == "contiguous":
        bounds = [m * num_samples // num_workers for m in range(num_workers + 1)]
        return [np.arange(bounds[m], bounds[m + 1]) for m in range(num_workers)]
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown partition {scheme!r}; expected one of {', '.join(PARTITIONS)}")
    # Checked here, in the run config's terms: Flower Datasets would divide by zero, or name its own parameters.
    if scheme == "shard" and num_workers * shards_per_partition > num_samples:
        raise ValueError(f"'shard': num-clients x shards-per-partition = {num_workers} x {shards_per_partition} shards "
                         f"of at least one sample each need {num_workers * shards_per_partition} samples, there are "
                         f"{num_samples}; lower shards-per-partition or num-clients")
    if scheme == "pathological" and classes_per_partition > (classes := len(np.unique(labels))):
        raise ValueError(f"'pathological': classes-per-partition = {classes_per_partition}, but the data have "
                         f"{classes} classes; choose at most {classes}")
    shards = _flower_datasets_partition(np.asarray(labels), num_workers, scheme, seed, alpha, classes_per_partition,
                                        shards_per_partition)
    empty = [worker for worker, shard in enumerate(shards) if shard.size == 0]
    if empty:
        raise ValueError(f"partition {scheme!r} leaves worker(s) {empty} of {num_workers} without samples; "
                         "choose fewer workers or other partition parameters")
    return shards


def _flower_datasets_partition(labels: np.ndarray, num_workers: int, scheme: str, seed: int, alpha: float,
                               classes_per_partition: int, shards_per_partition: int) -> list[np.ndarray]:
    import warnings

    # Deferred: Flower Datasets and Hugging Face datasets take seconds to import, and only these schemes need them.
    from datasets import Dataset as Table
    from datasets.utils.logging import disable_progress_bar
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    disable_progress_bar()
    table = Table.from_dict({"label": labels.astype(np.int64), "index": np.arange(len(labels), dtype=np.int64)})
    if scheme == "iid":
        table = table.shuffle(seed=seed)  # IidPartitioner cuts the table as it comes
        partitioner = IidPartitioner(num_partitions=num_workers)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=num_workers, partition_by="label", alpha=alpha,
                                           min_partition_size=1, seed=seed)
    elif scheme == "pathological":
        partitioner = PathologicalPartitioner(num_partitions=num_workers, partition_by="label",
                                              num_classes_per_partition=classes_per_partition, seed=seed)
    else:
        partitioner = ShardPartitioner(num_partitions=num_workers, partition_by="label",
                                       num_shards_per_partition=shards_per_partition, seed=seed)
    partitioner.dataset = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyarrow's deprecation notes inside the partitioners
        # The Dirichlet partitioner warns on every failed draw; the error below says it once, in our terms.
        warnings.filterwarnings("ignore", "The specified min_partition_size", UserWarning)
        try:
            return [np.sort(np.asarray(partitioner.load_partition(worker)["index"], dtype=np.int64))
                    for worker in range(num_workers)]
        except ValueError as error:
            if scheme == "dirichlet" and "max number of attempts" in str(error):
                raise ValueError(f"no Dirichlet(alpha = {alpha}) draw gave each of {num_workers} workers a sample "
                                 f"of the {len(labels)} (Flower Datasets tries 10 times); use fewer clients or a "
                                 f"larger dirichlet-alpha") from None
            raise


@functools.lru_cache(maxsize=None)
def cached_partitions(
    dataset: str, data_dir: str, scheme: str, num_workers: int, seed: int, alpha: float,
    classes_per_partition: int = 2, shards_per_partition: int = 2,
) -> tuple[np.ndarray, ...]:
    """Each worker's sample indices of a built-in data set under a partition, once per process."""
    labels = load_dataset(dataset, data_dir, seed).train_labels.numpy()
    return tuple(partition_indices(labels, num_workers, scheme, seed, alpha, classes_per_partition,
                                   shards_per_partition))


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
    classes_per_partition: int = 2,
    shards_per_partition: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of one worker's shard, computed once per process and cached (MNIST also on disk)."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker index {worker} is outside 0..{num_workers - 1}")
    params = (seed, alpha, classes_per_partition, shards_per_partition)
    cached = _shard_file(dataset, data_dir, scheme, num_workers, worker, *params)
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as stored:
                features, labels = torch.from_numpy(stored["features"]), torch.from_numpy(stored["labels"])
            return features.to(getattr(torch, dtype)), labels
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file: rebuild it
    features, labels = _compute_partition(dataset, data_dir, scheme, num_workers, worker, *params)
    if cached is not None:
        _write_shard(cached, features, labels)
    return features.to(getattr(torch, dtype)), labels


PARTITION_CACHE_ENV = "LAQ_FL_CACHE_DIR"


def _shard_file(dataset: str, data_dir: str, scheme: str, num_workers: int, worker: int, seed: int,
                alpha: float, classes_per_partition: int = 2, shards_per_partition: int = 2) -> Path | None:
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
                      "alpha": alpha, "classes": classes_per_partition, "shards": shards_per_partition,
                      "format": 2}, sort_keys=True)
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
                       alpha: float, classes_per_partition: int = 2, shards_per_partition: int = 2
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(dataset, data_dir, seed)
    index = torch.from_numpy(cached_partitions(dataset, data_dir, scheme, num_workers, seed, alpha,
                                                classes_per_partition, shards_per_partition)[worker])
    return data.train_features[index], data.train_labels[index]


def minibatch_indices(num_samples: int, batch_size: int, seed: int, worker: int, iteration: int) -> np.ndarray:
    """The minibatch of worker ``worker`` at ``iteration`` (SGD, SLAQ): seeded, so every runner draws the same."""
    rng = np.random.default_rng([seed, worker, iteration])
    if batch_size >= num_samples:
        return np.arange(num_samples)
    return np.sort(rng.choice(num_samples, size=batch_size, replace=False))
