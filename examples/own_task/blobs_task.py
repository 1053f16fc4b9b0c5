"""A task of your own: a small network on your own CSV data, through laq-fl's Task interface (no change to laq_fl/).

Run it with the run config value ``task = "blobs_task:task"`` (this folder on PYTHONPATH, or the module installed)
and ``data-dir`` pointing at the folder that holds ``blobs.csv`` (``python make_data.py DIR`` writes one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from laq_fl.data import Dataset, DatasetNotFoundError
from laq_fl.tasks import Task

FILE_NAME = "blobs.csv"
TEST_FRACTION = 0.2


class BlobsTask(Task):
    """3-class points in the plane (columns x, y, label) and a 2-16-3 tanh network: p = 99 parameters."""

    name = "blobs-mlp"

    def build_module(self) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))

    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        path = Path(data_dir).expanduser() / FILE_NAME
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} not found: write one with `python examples/own_task/make_data.py "
                                       f"{data_dir}` or put your own CSV (x, y, label) there")
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        features = torch.from_numpy(table[:, :2].astype(np.float32))
        labels = torch.from_numpy(table[:, 2].astype(np.int64))
        # A fixed split (the last rows are the test set), so that every node and the server agree on it.
        cut = len(table) - int(len(table) * TEST_FRACTION)
        return Dataset(name=self.name, train_features=features[:cut], train_labels=labels[:cut],
                       test_features=features[cut:], test_labels=labels[cut:])


task = BlobsTask()
