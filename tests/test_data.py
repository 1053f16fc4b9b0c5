"""Datasets and partitions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from laq_fl.data import (
    MNIST_RAW_FILES,
    DatasetNotFoundError,
    load_mnist,
    load_partition,
    make_synthetic,
    minibatch_indices,
    partition_indices,
)


def assert_disjoint_cover(shards: list[np.ndarray], total: int) -> None:
    joined = np.concatenate(shards)
    assert joined.size == total
    np.testing.assert_array_equal(np.sort(joined), np.arange(total))


def test_contiguous_is_the_papers_split() -> None:
    shards = partition_indices(np.zeros(60000), 10, "contiguous")
    for m, shard in enumerate(shards):
        np.testing.assert_array_equal(shard, np.arange(6000 * m, 6000 * (m + 1)))
    assert_disjoint_cover(partition_indices(np.zeros(103), 10, "contiguous"), 103)


def test_iid_is_seeded_disjoint_and_balanced() -> None:
    labels = np.zeros(1003)
    shards = partition_indices(labels, 7, "iid", seed=3)
    assert_disjoint_cover(shards, 1003)
    assert {len(s) for s in shards} <= {143, 144}
    assert all(np.array_equal(a, b) for a, b in zip(shards, partition_indices(labels, 7, "iid", seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, partition_indices(labels, 7, "iid", seed=4)))


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_covers_and_skews(alpha: float) -> None:
    labels = np.repeat(np.arange(10), 200)
    shards = partition_indices(labels, 8, "dirichlet", seed=1, alpha=alpha)
    assert_disjoint_cover(shards, labels.size)
    assert all(len(s) > 0 for s in shards)
    histograms = np.array([np.bincount(labels[s], minlength=10) / len(s) for s in shards])
    spread = np.abs(histograms - 0.1).mean()
    if alpha <= 0.05:
        assert spread > 0.1  # strongly label-skewed
    if alpha >= 100:
        assert spread < 0.05  # close to iid


@pytest.mark.parametrize("scheme, workers, knob, match", [
    ("shard", 4, 100, "4 x 100 shards .* need 400 samples, there are 200; lower shards-per-partition"),
    ("pathological", 4, 11, "classes-per-partition = 11, but the data have 10 classes"),
])
def test_a_split_that_cannot_be_made_names_the_run_config_key(scheme: str, workers: int, knob: int, match: str) -> None:
    labels = np.arange(200) % 10
    with pytest.raises(ValueError, match=match):
        partition_indices(labels, workers, scheme, classes_per_partition=knob, shards_per_partition=knob)


def test_a_dirichlet_partition_with_too_many_workers_says_what_to_change() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error, not a warning per failed draw
        with pytest.raises(ValueError, match="150 workers .* fewer clients or a larger dirichlet-alpha"):
            partition_indices(labels, 150, "dirichlet", seed=0, alpha=0.5)


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_pathological_gives_each_worker_its_number_of_classes(classes: int) -> None:
    labels = np.repeat(np.arange(10), 100)
    shards = partition_indices(labels, 10, "pathological", seed=2, classes_per_partition=classes)
    joined = np.concatenate(shards)
    assert joined.size == np.unique(joined).size  # disjoint
    assert all(len(np.unique(labels[shard])) <= classes for shard in shards)
    assert max(len(np.unique(labels[shard])) for shard in shards) == classes


def test_shard_gives_each_worker_label_sorted_shards() -> None:
    labels = np.repeat(np.arange(10), 100)
    shards = partition_indices(labels, 5, "shard", seed=0, shards_per_partition=2)
    assert_disjoint_cover(shards, labels.size)
    assert all(len(shard) == 200 and len(np.unique(labels[shard])) <= 3 for shard in shards)
    again = partition_indices(labels, 5, "shard", seed=0, shards_per_partition=2)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_a_partition_that_cannot_be_made_is_refused() -> None:
    """Flower Datasets' own check: class 0 has one sample and two workers drawn for it."""
    with pytest.raises(ValueError, match="more partitions"):
        partition_indices(np.array([0, 1, 1, 1, 1, 1]), 4, "pathological", seed=6, classes_per_partition=1)


def test_unknown_partition_rejected() -> None:
    with pytest.raises(ValueError, match="partition"):
        partition_indices(np.zeros(10), 2, "round-robin")


def test_mnist_partition_matches_the_data_and_is_cached(mnist_dir: str) -> None:
    data = load_mnist(mnist_dir)
    assert data.train_features.shape == (60000, 784) and data.test_features.shape == (10000, 784)
    assert float(data.train_features.max()) == 1.0 and float(data.train_features.min()) == 0.0
    np.testing.assert_array_equal(np.bincount(data.test_labels.numpy()), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    features, labels = load_partition("mnist", mnist_dir, "contiguous", 10, 3)
    assert features.shape == (6000, 784)
    np.testing.assert_array_equal(features.numpy(), data.train_features[18000:24000].numpy())
    np.testing.assert_array_equal(labels.numpy(), data.train_labels[18000:24000].numpy())
    again = load_partition("mnist", mnist_dir, "contiguous", 10, 3)
    assert again[0] is features  # loaded once per process, not once per round


def test_missing_mnist_names_the_directory_and_files(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert all(name in message for name in MNIST_RAW_FILES)


def test_synthetic_is_seeded() -> None:
    a, b, c = make_synthetic(1), make_synthetic(1), make_synthetic(2)
    assert a is b
    assert not np.array_equal(a.train_features.numpy(), c.train_features.numpy())
    assert a.train_features.shape == (6000, 784) and set(np.unique(a.train_labels.numpy())) <= set(range(10))


def test_minibatches_are_seeded_and_without_replacement() -> None:
    batch = minibatch_indices(6000, 500, seed=0, worker=2, iteration=7)
    assert batch.size == 500 and np.unique(batch).size == 500 and batch.max() < 6000
    np.testing.assert_array_equal(batch, minibatch_indices(6000, 500, seed=0, worker=2, iteration=7))
    assert not np.array_equal(batch, minibatch_indices(6000, 500, seed=0, worker=2, iteration=8))
    assert not np.array_equal(batch, minibatch_indices(6000, 500, seed=0, worker=3, iteration=7))
    np.testing.assert_array_equal(minibatch_indices(10, 500, 0, 0, 0), np.arange(10))


def test_a_worker_shard_is_kept_on_disk_and_read_back_bit_for_bit(mnist_dir: str, tmp_path, monkeypatch) -> None:
    """A deployed SuperNode runs every message in a new process: the shard comes from the disk cache, unchanged."""
    from laq_fl.data import PARTITION_CACHE_ENV, _compute_partition

    monkeypatch.setenv(PARTITION_CACHE_ENV, str(tmp_path / "cache"))
    load_partition.cache_clear()
    features, labels = load_partition("mnist", mnist_dir, "dirichlet", 7, 2, 5, 0.3)
    (stored,) = (tmp_path / "cache").iterdir()
    assert stored.name.startswith("mnist-dirichlet-2of7-")
    fresh_features, fresh_labels = _compute_partition("mnist", mnist_dir, "dirichlet", 7, 2, 5, 0.3)
    load_partition.cache_clear()
    again_features, again_labels = load_partition("mnist", mnist_dir, "dirichlet", 7, 2, 5, 0.3)  # from the file
    for a, b in ((features, fresh_features), (again_features, fresh_features), (labels, fresh_labels), (again_labels, fresh_labels)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    stored.write_bytes(b"damaged")
    load_partition.cache_clear()
    assert torch.equal(load_partition("mnist", mnist_dir, "dirichlet", 7, 2, 5, 0.3)[0], fresh_features)  # rebuilt
    load_partition.cache_clear()
    monkeypatch.setenv(PARTITION_CACHE_ENV, "/proc/not-writable")
    assert torch.equal(load_partition("mnist", mnist_dir, "dirichlet", 7, 2, 5, 0.3)[1], fresh_labels)
    load_partition.cache_clear()
