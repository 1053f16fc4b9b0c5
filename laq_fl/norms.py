"""Euclidean norms of flat vectors, summed in float64 on the calling thread.

``np.dot`` and ``np.linalg.norm`` hand long vectors to a multi-threaded BLAS, whose worker threads then spin
beside torch's OpenMP pool: on a 2-core machine that made every MLP gradient after a norm about 3x slower
(45 ms -> 140 ms per worker, measured with scripts/bench_rounds.py). ``np.einsum`` sums on this thread, and its
result does not depend on how many threads a BLAS would have used, so workers and server agree on every bit.
"""

from __future__ import annotations

import math

import numpy as np


def squared_norm(vector: np.ndarray) -> float:
    """``||x||^2`` of a vector of any float dtype and shape ``(p,)``, accumulated in float64."""
    values = np.asarray(vector, np.float64)
    return float(np.einsum("i,i->", values, values))


def norm(vector: np.ndarray) -> float:
    """``||x||_2``: :func:`squared_norm`'s square root."""
    return math.sqrt(squared_norm(vector))
