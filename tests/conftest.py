"""Shared fixtures: where MNIST lives, and small problems for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "LAQ_FL_DATA_DIR"


def data_dir() -> Path:
    """The project's data directory: $LAQ_FL_DATA_DIR, else ../shared/data beside the checkout."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).resolve() if configured else (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    path = data_dir()
    raw = path / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists() and not (raw / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST not found under {raw}; set {DATA_DIR_ENV} to the folder that holds MNIST/raw/")
    return str(path)


def assert_same_bits(actual, expected) -> None:
    """Bit for bit: same dtype, shape and bytes (``assert_array_equal`` takes -0.0 for 0.0 and NaN for NaN)."""
    import numpy as np

    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


@pytest.fixture
def task_identity():
    """Building a Flower Message outside a runtime needs the (private) task identity set."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 0
    return TaskIdentity


@pytest.fixture(autouse=True, scope="session")
def private_partition_cache(tmp_path_factory):
    """Workers keep their MNIST shard on disk ($LAQ_FL_CACHE_DIR); tests use a folder of their own."""
    previous = os.environ.get("LAQ_FL_CACHE_DIR")
    os.environ["LAQ_FL_CACHE_DIR"] = str(tmp_path_factory.mktemp("partitions"))
    yield
    if previous is None:
        os.environ.pop("LAQ_FL_CACHE_DIR", None)
    else:
        os.environ["LAQ_FL_CACHE_DIR"] = previous
