"""Write ``blobs.csv`` (x, y, label: three Gaussian blobs, 1,500 points) into the folder given.

    python examples/own_task/make_data.py DATA_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CENTRES = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])


def write_blobs(folder: Path, seed: int = 0, points_per_class: int = 500) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CENTRES)), points_per_class)
    points = CENTRES[labels] + rng.normal(scale=1.0, size=(len(labels), 2))
    order = rng.permutation(len(labels))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "blobs.csv"
    np.savetxt(path, np.column_stack([points[order], labels[order]]), delimiter=",", header="x,y,label",
               comments="", fmt=["%.6f", "%.6f", "%d"])
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_blobs(args.data_dir, args.seed))
