"""The server side of LAQ: lazy aggregate, per-worker copies, skip clocks and the step (4)."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import numpy as np

from laq_fl.codec import Upload
from laq_fl.config import AlgorithmConfig
from laq_fl.rule import lazy_threshold, upload_forced
from laq_fl.worker import Instruction

WorkerKey = Hashable


class ServerMemory:
    """State of the server in Algorithm 2 and the LAQ iteration (4).

    Attributes
    ----------
    theta
        The current iterate ``theta^k`` (float32 unless the problem runs in float64).
    aggregate
        The lazy aggregate ``nabla^k`` in float64. Invariant: ``aggregate == sum(copies.values())``.
    copies
        ``Q_m(theta_hat_m)`` per worker, in the dtype of ``theta``; a worker is absent until its first upload.
    skip_clocks
        Consecutive skips per worker, for (7b).
    out_of_sync
        Workers whose last reply was lost or rejected: the server cannot know whether the worker
        moved its ``Q_hat``, so it keeps the stale copy for now and asks for a reset upload.
    recent_sq_diffs
        ``||theta^{k+1-d} - theta^{k-d}||^2`` for ``d = 1..D``, newest first, for (7a).
    """

    def __init__(self, theta: np.ndarray, config: AlgorithmConfig, num_workers: int) -> None:
        if theta.ndim != 1:
            raise ValueError(f"theta must be a flat vector, got shape {theta.shape}")
        self.config = config
        self.num_workers = num_workers
        self.theta = theta.copy()
        self.aggregate = np.zeros(theta.shape, np.float64)
        self.copies: dict[WorkerKey, np.ndarray] = {}
        self.skip_clocks: dict[WorkerKey, int] = {}
        self.out_of_sync: set[WorkerKey] = set()
        self.recent_sq_diffs: deque[float] = deque(maxlen=config.memory)
        self.iteration = 0

    @property
    def size(self) -> int:
        return self.theta.size

    def threshold(self) -> float:
        """The worker-independent part of (7a); zero when the algorithm is not lazy."""
        if not self.config.spec.lazy:
            return 0.0
        config = self.config
        return lazy_threshold(self.recent_sq_diffs, config.xi, config.lr, self.num_workers, config.xi_warmup)

    def instruction(self, worker: WorkerKey) -> Instruction:
        """Threshold and forced-upload flag for ``worker`` at this iteration.

        Uploads are forced every round for non-lazy members (GD, QGD, SGD), for a worker
        the server holds no copy of (its first round, or after :meth:`forget`), for a worker
        out of sync (with a reset: both sides restart from ``Q_hat = 0``), and by (7b).
        """
        reset = worker in self.out_of_sync
        force = (
            reset
            or not self.config.spec.lazy
            or worker not in self.copies
            or upload_forced(self.skip_clocks.get(worker, 0), self.config.t_bar)
        )
        return Instruction(threshold=self.threshold(), force_upload=force, reset=reset)

    def decode(self, worker: WorkerKey, upload: Upload) -> np.ndarray:
        """The worker's new ``Q_m(theta^k)`` from its upload; raises ``PayloadError`` and changes nothing if malformed."""
        previous = None if worker in self.out_of_sync else self.copies.get(worker)
        return self.config.compressor.decode(upload, previous, self.size, self.theta.dtype)

    def accept(self, worker: WorkerKey, upload: Upload) -> None:
        """Decode an upload and fold it in (:meth:`decode` then :meth:`commit`)."""
        self.commit(worker, self.decode(worker, upload))

    def commit(self, worker: WorkerKey, new_copy: np.ndarray) -> None:
        """Replace the worker's copy: ``nabla += Q_m(theta^k) - Q_m(theta_hat_m)`` (4); resets its clock."""
        previous = self.copies.get(worker)
        self.aggregate += new_copy
        if previous is not None:
            self.aggregate -= previous
        self.copies[worker] = new_copy
        self.skip_clocks[worker] = 0
        self.out_of_sync.discard(worker)

    def skip(self, worker: WorkerKey) -> None:
        """The worker uploaded nothing: keep its stale copy and advance its clock (Algorithm 2, step 9)."""
        self.skip_clocks[worker] = self.skip_clocks.get(worker, 0) + 1

    def lost(self, worker: WorkerKey) -> None:
        """A reply from ``worker`` was lost or rejected: reuse its stale copy this round, resync next round."""
        self.out_of_sync.add(worker)

    def forget(self, worker: WorkerKey) -> None:
        """Drop a worker's copy (for example after a lost upload); its next upload is forced and starts from zero."""
        previous = self.copies.pop(worker, None)
        if previous is not None:
            self.aggregate -= previous
        self.skip_clocks.pop(worker, None)
        self.out_of_sync.discard(worker)

    def step(self) -> np.ndarray:
        """``theta^{k+1} = theta^k - alpha nabla^k`` (4); records the parameter difference for (7a)."""
        new_theta = (self.theta.astype(np.float64) - self.config.lr * self.aggregate).astype(self.theta.dtype)
        difference = new_theta.astype(np.float64) - self.theta
        self.recent_sq_diffs.appendleft(float(np.dot(difference, difference)))
        self.theta = new_theta
        self.iteration += 1
        return new_theta
