"""The server side of the family: lazy aggregate, per-worker copies, skip clocks and the step (4)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from laq_fl.arrays import all_finite, cast, like, norm, squared_norm, to_numpy
from laq_fl.codec import PayloadError
from laq_fl.compressors import NonFiniteError
from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import NO_VERSION, Broadcast, Downlink, state_checksum
from laq_fl.skip_rules import Instruction, WorkerKey, needs_resync


@dataclass(frozen=True)
class Restore:
    """What the server sends a worker whose state it knows to differ from its own (a node that lost its state, a
    resumed run): the worker's state as the server holds it, so the worker continues exactly where it was.

    Attributes
    ----------
    copy
        ``Q_hat_m``, shape ``(p,)`` in the run's dtype.
    version
        Uploads since the worker's last reset.
    error_sq
        ``||eps_hat_m||^2`` of the last upload (the worker reported it with the upload), for (7a).
    theta_hat
        The iterate of the last upload, for rules that need it (LASG-WK2); ``None`` otherwise.
    """

    copy: np.ndarray
    version: int
    error_sq: float
    theta_hat: np.ndarray | None = None


class ServerState:
    """State of the server in Algorithm 2 and the LAQ iteration (4) of Sun et al. (2019).

    Attributes
    ----------
    theta
        The current iterate ``theta^k``, shape ``(p,)`` (float32 unless the problem runs in float64).
    aggregate
        The lazy aggregate ``nabla^k`` in float64. Invariant: ``aggregate == sum(copies.values())``.
    copies
        ``Q_m(theta_hat_m)`` per worker, in the dtype of ``theta``; a worker is absent until its first upload.
        With a ``device``, the aggregate and the copies are torch tensors there (:meth:`to_arrays`, :class:`Restore`
        and :meth:`checksum` read them back); theta stays a numpy array, the iterate that is broadcast.
    versions
        Uploads per worker since its last reset; the worker's :class:`~laq_fl.worker.WorkerState` counts the same.
    skip_clocks
        Consecutive skips (or rounds without contact) per worker, for (7b).
    out_of_sync
        Workers whose last reply was lost or rejected: the server cannot know whether the worker
        moved its ``Q_hat``, so it keeps the stale copy for now and asks for a reset upload.
    restore_pending
        Workers known to hold another state than the server's (they lost it, or the run resumed): the next message
        to each carries a :class:`Restore` of the server's copy.
    error_sqs
        ``||eps_hat_m||^2`` of each worker's last upload, as it reported it (for :class:`Restore`).
    recent_sq_diffs
        ``||theta^{k+1-d} - theta^{k-d}||^2`` for ``d = 1..D``, newest first, for (7a).
    downlink
        Two-way broadcasts (``downlink_bits < 32``): ``theta_tilde``, the iterate the workers hold, its version and
        recent innovations (:class:`~laq_fl.downlink.Downlink`); ``None`` when theta itself is broadcast.
    theta_versions
        The version of ``theta_tilde`` each worker holds, as far as its accepted replies show (two-way only).
    upload_iterates, smoothness
        For server-side rules (``needs_upload_iterates``) and rules whose worker half keeps ``theta_hat``
        (``needs_same_sample``, for :class:`Restore`): the iterate of each worker's last upload
        (``theta_hat_m``, at which it computed) and the estimate ``L_m`` of its gradient's Lipschitz constant,
        the largest secant ``||Q_new - Q_old|| / ||theta_new - theta_hat_m||`` seen over its uploads.
    """

    def __init__(self, theta: np.ndarray, config: AlgorithmConfig, num_workers: int, device: object = None) -> None:
        """``device`` (a ``torch.device``): where the aggregate, the copies and the step's arithmetic live; ``None``
        keeps them in numpy. Both give the same theta bit for bit (element-wise float64 arithmetic)."""
        theta = np.asarray(theta)
        if theta.ndim != 1 or theta.dtype.kind != "f":
            raise ValueError(f"theta must be a flat float vector, got {theta.dtype} with shape {theta.shape}")
        theta = theta.astype(theta.dtype.newbyteorder("="), copy=False)  # broadcast in the machine's byte order, whatever came in
        self.config = config
        self.num_workers = num_workers
        self.compressor = config.compressor(theta.dtype)
        self.memory = config.memory
        self.rule = config.rule.server(config.rule_settings(num_workers))
        self.theta = theta.copy()
        self.aggregate = np.zeros(theta.shape, np.float64)
        if device is not None:
            import torch

            self.aggregate = torch.zeros(theta.shape, dtype=torch.float64, device=device)
        self.copies: dict[WorkerKey, np.ndarray] = {}
        self.versions: dict[WorkerKey, int] = {}
        self.skip_clocks: dict[WorkerKey, int] = {}
        self.out_of_sync: set[WorkerKey] = set()
        self.restore_pending: set[WorkerKey] = set()
        self.error_sqs: dict[WorkerKey, float] = {}
        self.recent_sq_diffs: deque[float] = deque(maxlen=config.num_differences)
        self.iteration = 0
        downlink_compressor = config.downlink_compressor(theta.dtype)
        self.downlink = None if downlink_compressor is None else Downlink(self.theta, downlink_compressor)
        self.theta_versions: dict[WorkerKey, int] = {}
        self.keeps_upload_iterates = getattr(self.rule, "needs_upload_iterates", False) or config.rule.worker.needs_same_sample
        self.upload_iterates: dict[WorkerKey, np.ndarray] = {}
        self.smoothness: dict[WorkerKey, float] = {}

    @property
    def iterate(self) -> np.ndarray:
        """Where the workers compute their gradients this round: ``theta_tilde`` with two-way broadcasts, else theta."""
        return self.theta if self.downlink is None else self.downlink.theta_tilde

    def broadcast(self, worker: WorkerKey) -> Broadcast:
        """What ``worker`` receives this round: theta (one-way), or what brings its ``theta_tilde`` up to date."""
        if self.downlink is None:
            return Broadcast(version=NO_VERSION, theta=self.theta)
        return self.downlink.broadcast(self.theta_versions.get(worker, NO_VERSION))

    def delivered(self, worker: WorkerKey) -> None:
        """``worker``'s reply was accepted: it holds the current ``theta_tilde`` (and any restore it was sent)."""
        if self.downlink is not None:
            self.theta_versions[worker] = self.downlink.version
        self.restore_pending.discard(worker)

    def restore(self, worker: WorkerKey) -> Restore | None:
        """The :class:`Restore` to send ``worker`` this round, or ``None`` (none pending, or a reset upload
        pending instead, which makes its state irrelevant)."""
        if worker not in self.restore_pending or needs_resync(self, worker):
            return None
        return Restore(
            copy=to_numpy(self.copies[worker]),
            version=self.versions[worker],
            error_sq=self.error_sqs.get(worker, 0.0),
            theta_hat=self.upload_iterates.get(worker) if self.config.rule.worker.needs_same_sample else None,
        )

    def state_differs(self, worker: WorkerKey) -> None:
        """``worker`` holds another state than the server's copy, and did not change it this round (it said so,
        or it is a new node for that worker): send it a :class:`Restore` with its next message, and the full
        ``theta_tilde`` (two-way)."""
        self.theta_versions.pop(worker, None)
        if worker in self.copies and worker not in self.out_of_sync:
            self.restore_pending.add(worker)

    def checksum(self, worker: WorkerKey) -> int:
        """The checksum ``worker``'s state must have if it agrees with the server (:meth:`WorkerState.checksum`):
        its copy (zeros before the first upload) and, two-way, the current ``theta_tilde``."""
        copy = self.copies.get(worker)
        if copy is None:
            copy = np.zeros_like(self.theta)
        return state_checksum(to_numpy(copy), None if self.downlink is None else self.downlink.theta_tilde)

    @property
    def size(self) -> int:
        return self.theta.size

    def instruction(self, worker: WorkerKey) -> Instruction | None:
        """The rule's server half for ``worker`` (threshold, forced upload, or ``None`` for no contact), with a
        forced reset upload on top whenever the worker needs a resync, whatever the half said."""
        instruction = self.rule.instruct(self, worker)
        if not needs_resync(self, worker):
            return instruction
        threshold = 0.0 if instruction is None else instruction.threshold
        return Instruction(threshold=threshold, force_upload=True, reset=True)

    def decode(self, worker: WorkerKey, payload: bytes) -> np.ndarray:
        """The worker's new ``Q_m(theta^k)`` from its payload.

        Raises :class:`~laq_fl.codec.PayloadError` and changes nothing if the payload is malformed, or if the copy
        it makes is not finite (a finite innovation added to the copy can overflow the run's dtype).
        """
        previous = None if needs_resync(self, worker) else self.copies[worker]  # the worker was told to reset
        decoded = like(self.compressor.decompress(payload, self.size), self.aggregate)
        with np.errstate(over="ignore"):
            new_copy = self.memory.reconstruct(previous, decoded, self.theta.dtype)
        if not all_finite(new_copy):
            raise PayloadError(f"the copy this payload makes overflows {new_copy.dtype}")
        return new_copy

    def payload_bits(self, payload: bytes) -> int:
        return self.compressor.payload_bits(payload, self.size)

    def expected_version(self, worker: WorkerKey, upload: bool) -> int:
        """The version ``worker`` must report after this round: one more than the server counts on an upload
        (1 after a reset), the same on a skip."""
        known = 0 if needs_resync(self, worker) else self.versions[worker]
        return known + 1 if upload else known

    def accept(self, worker: WorkerKey, payload: bytes, error_sq: float = 0.0) -> None:
        """Decode a payload and fold it in (:meth:`decode` then :meth:`commit`)."""
        self.commit(worker, self.decode(worker, payload), error_sq)

    def commit(self, worker: WorkerKey, new_copy: np.ndarray, error_sq: float = 0.0) -> None:
        """Replace the worker's copy: ``nabla += Q_m(theta^k) - Q_m(theta_hat_m)`` (4); resets its clock.
        ``error_sq`` is the ``||eps_hat_m||^2`` the worker reported with the upload (kept for :class:`Restore`)."""
        self.versions[worker] = self.expected_version(worker, upload=True)
        self.error_sqs[worker] = float(error_sq)
        previous = self.copies.get(worker)
        if self.keeps_upload_iterates:
            self._record_upload_iterate(worker, previous, new_copy)
        self.aggregate += new_copy
        if previous is not None:
            self.aggregate -= previous
        self.copies[worker] = new_copy
        self.skip_clocks[worker] = 0
        self.out_of_sync.discard(worker)
        self.restore_pending.discard(worker)

    def _record_upload_iterate(self, worker: WorkerKey, previous: np.ndarray | None, new_copy: np.ndarray) -> None:
        iterate = self.iterate
        last = self.upload_iterates.get(worker)
        if previous is not None and last is not None and worker not in self.out_of_sync:
            moved = norm(iterate.astype(np.float64) - last)
            if moved > 0:
                change = norm(cast(new_copy, np.float64) - previous)
                self.smoothness[worker] = max(self.smoothness.get(worker, 0.0), change / moved)
        self.upload_iterates[worker] = iterate.copy()

    def skip(self, worker: WorkerKey) -> None:
        """The worker uploaded nothing (or was not contacted): keep its stale copy, advance its clock."""
        self.skip_clocks[worker] = self.skip_clocks.get(worker, 0) + 1

    def lost(self, worker: WorkerKey) -> None:
        """A reply from ``worker`` was lost or rejected: reuse its stale copy this round, resync next round
        (a reset upload and, two-way, the full ``theta_tilde``: the server cannot know what the worker applied)."""
        self.out_of_sync.add(worker)
        self.restore_pending.discard(worker)
        self.theta_versions.pop(worker, None)

    def forget(self, worker: WorkerKey) -> None:
        """Drop a worker's copy (a node that is gone); its next upload is forced and starts from zero."""
        previous = self.copies.pop(worker, None)
        if previous is not None:
            self.aggregate -= previous
        self.versions.pop(worker, None)
        self.skip_clocks.pop(worker, None)
        self.out_of_sync.discard(worker)
        self.restore_pending.discard(worker)
        self.error_sqs.pop(worker, None)
        self.theta_versions.pop(worker, None)
        self.upload_iterates.pop(worker, None)
        self.smoothness.pop(worker, None)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as plain arrays, for a checkpoint: theta, the aggregate, the recent differences, the
        iteration, ``theta_tilde`` and its version (two-way), and per worker (in ``workers`` order, keys as ``str``)
        its copy, version, clock, out-of-sync and restore flags, known ``theta_tilde`` version, reported
        ``||eps_hat||^2``, upload iterate and smoothness estimate. Workers without a copy but with a clock appear
        with a zero copy and version 0. Not kept: the downlink's recent innovations (after a restore, every worker
        gets the full ``theta_tilde``, which changes bytes, not the iterates)."""
        workers = sorted(
            set(self.copies) | set(self.skip_clocks) | self.out_of_sync | set(self.theta_versions) | self.restore_pending,
            key=str,
        )
        zeros = np.zeros_like(self.theta)

        def stacked(values: dict) -> np.ndarray:
            rows = [to_numpy(values.get(worker, zeros)) for worker in workers]
            return np.asarray(rows, self.theta.dtype).reshape(len(workers), self.size)

        arrays = {
            "theta": self.theta,
            "aggregate": to_numpy(self.aggregate),
            "recent-sq-diffs": np.asarray(self.recent_sq_diffs, np.float64),
            "iteration": np.asarray(self.iteration, np.int64),
            "workers": np.asarray([str(worker) for worker in workers]),
            "has-copy": np.asarray([worker in self.copies for worker in workers], bool),
            "copies": stacked(self.copies),
            "versions": np.asarray([self.versions.get(worker, 0) for worker in workers], np.int64),
            "skip-clocks": np.asarray([self.skip_clocks.get(worker, 0) for worker in workers], np.int64),
            "out-of-sync": np.asarray([worker in self.out_of_sync for worker in workers], bool),
            "restore-pending": np.asarray([worker in self.restore_pending for worker in workers], bool),
            "theta-versions": np.asarray([self.theta_versions.get(worker, NO_VERSION) for worker in workers], np.int64),
            "error-sqs": np.asarray([self.error_sqs.get(worker, 0.0) for worker in workers], np.float64),
            "has-upload-iterate": np.asarray([worker in self.upload_iterates for worker in workers], bool),
            "upload-iterates": stacked(self.upload_iterates),
            "smoothness": np.asarray([self.smoothness.get(worker, np.nan) for worker in workers], np.float64),
        }
        if self.downlink is not None:
            arrays.update(self.downlink.to_arrays())
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: AlgorithmConfig, num_workers: int, key=int,
                    device: object = None) -> ServerState:
        """Inverse of :meth:`to_arrays`; ``key`` turns the stored ``str`` worker keys back (``int`` for partitions).

        Raises ``KeyError`` for an array the checkpoint lacks and ``ValueError`` when theta is not a flat float vector.
        """
        state = cls(np.asarray(arrays["theta"]), config, num_workers, device)
        state.aggregate = like(np.array(arrays["aggregate"], np.float64), state.aggregate)
        state.recent_sq_diffs.extend(float(value) for value in arrays["recent-sq-diffs"])
        state.iteration = int(arrays["iteration"])
        if state.downlink is not None:
            state.downlink.theta_tilde = np.array(arrays["theta-tilde"], state.theta.dtype)
            state.downlink.version = int(arrays["theta-version"])
        columns = zip(
            arrays["workers"], arrays["has-copy"], arrays["copies"], arrays["versions"], arrays["skip-clocks"],
            arrays["out-of-sync"], arrays["restore-pending"], arrays["theta-versions"], arrays["error-sqs"],
            arrays["has-upload-iterate"], arrays["upload-iterates"], arrays["smoothness"],
        )
        for (name, has_copy, copy, version, clock, out_of_sync, restore, theta_version, error_sq, has_iterate, iterate,
             smoothness) in columns:
            worker = key(str(name))
            if has_copy:
                state.copies[worker] = like(np.array(copy, state.theta.dtype), state.aggregate)
                state.versions[worker] = int(version)
                state.error_sqs[worker] = float(error_sq)
            state.skip_clocks[worker] = int(clock)
            if out_of_sync:
                state.out_of_sync.add(worker)
            if restore:
                state.restore_pending.add(worker)
            if theta_version != NO_VERSION and state.downlink is not None:
                state.theta_versions[worker] = int(theta_version)
            if has_iterate:
                state.upload_iterates[worker] = np.array(iterate, state.theta.dtype)
            if np.isfinite(smoothness):
                state.smoothness[worker] = float(smoothness)
        return state

    def step(self) -> np.ndarray:
        """``theta^{k+1} = theta^k - alpha nabla^k`` (4); records the parameter difference for (7a) and, two-way,
        moves ``theta_tilde``.

        Raises :class:`~laq_fl.compressors.NonFiniteError`, changing nothing, when ``theta^{k+1}`` is not finite
        (the iteration diverged: a step size too large for the problem).
        """
        with np.errstate(over="ignore", invalid="ignore"):
            # Two roundings (product, then difference), never a fused multiply-add: the same bits on every device.
            step = self.config.lr * self.aggregate
            new_theta = to_numpy(cast(like(self.theta.astype(np.float64), step) - step, self.theta.dtype))
        if not np.isfinite(new_theta).all():
            raise NonFiniteError(
                f"theta^{self.iteration + 1} is not finite: the iteration diverged (lr = {self.config.lr} too large?)"
            )
        if self.downlink is not None:
            self.downlink.step(new_theta)
        difference = new_theta.astype(np.float64) - self.theta
        self.recent_sq_diffs.appendleft(squared_norm(difference))
        self.theta = new_theta
        self.iteration += 1
        return new_theta
