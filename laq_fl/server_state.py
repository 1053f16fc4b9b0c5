"""The server side of the family: the lazy aggregate, one record per worker, and the step (4).

The math lives here (decode an upload against the server's copy, fold it into the aggregate, step theta, move
``theta_tilde``); what a reply means and what a worker's next contact must repair is the protocol's
(:mod:`laq_fl.protocol`): each worker has one :class:`~laq_fl.protocol.WorkerRecord` and its
:class:`~laq_fl.protocol.Sync`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque

import numpy as np

from laq_fl.arrays import all_finite, cast, like, norm, squared_norm, to_numpy
from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import NO_VERSION, Broadcast, Downlink, state_checksum
from laq_fl.errors import NonFiniteError, PayloadError
from laq_fl.protocol import NodeIdentity, Restore, Sync, WorkerKey, WorkerRecord, record_columns
from laq_fl.skip_rules import Instruction

logger = logging.getLogger(__name__)

WORKERS_COLUMN = "workers"


class ServerState:
    """State of the server in Algorithm 2 and the LAQ iteration (4) of Sun et al. (2019).

    Attributes
    ----------
    theta
        The current iterate ``theta^k``, shape ``(p,)`` (float32 unless the problem runs in float64).
    aggregate
        The lazy aggregate ``nabla^k`` in float64. Invariant: ``aggregate == sum of the workers' copies``.
        With a ``device``, the aggregate and the copies are torch tensors there (:meth:`to_arrays`, :class:`Restore`
        and :meth:`checksum` read them back); theta stays a numpy array, the iterate that is broadcast.
    workers
        Worker key (its partition) -> :class:`~laq_fl.protocol.WorkerRecord`: its copy ``Q_m(theta_hat_m)``, version,
        skip clock, sync state, known ``theta_tilde`` version, upload iterate and smoothness estimate. A worker gets
        a record when first instructed, skipped or committed.
    recent_sq_diffs
        ``||theta^{k+1-d} - theta^{k-d}||^2`` for ``d = 1..D``, newest first, for (7a).
    downlink
        Two-way broadcasts (``downlink_bits < 32``): ``theta_tilde``, the iterate the workers hold, its version and
        recent innovations (:class:`~laq_fl.downlink.Downlink`); ``None`` when theta itself is broadcast.
    keeps_upload_iterates
        True for rules that read ``theta_hat_m`` on the server (``ps``) or whose worker half keeps it (LASG-WK2,
        restored with :class:`Restore`): each record then keeps the iterate of its last upload.
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
        self.workers: dict[WorkerKey, WorkerRecord] = {}
        self.recent_sq_diffs: deque[float] = deque(maxlen=config.num_differences)
        self.iteration = 0
        downlink_compressor = config.downlink_compressor(theta.dtype)
        self.downlink = None if downlink_compressor is None else Downlink(self.theta, downlink_compressor)
        # The worker half's arrays that are the iterate of the last upload: the server keeps them and restores them.
        self._mirrored = [array.name for array in config.rule.worker.state_arrays if array.upload_iterate]
        self.keeps_upload_iterates = getattr(self.rule, "needs_upload_iterates", False) or bool(self._mirrored)

    # ------------------------------------------------------------------ records

    def record(self, worker: WorkerKey) -> WorkerRecord:
        """``worker``'s record, made (``NEW``) when it has none."""
        record = self.workers.get(worker)
        if record is None:
            record = self.workers[worker] = WorkerRecord()
        return record

    @property
    def copies(self) -> dict[WorkerKey, np.ndarray]:
        """Worker -> its copy, for the workers that have one (a view: the sum of its values is the aggregate)."""
        return {worker: record.copy for worker, record in self.workers.items() if record.copy is not None}

    @property
    def iterate(self) -> np.ndarray:
        """Where the workers compute their gradients this round: ``theta_tilde`` with two-way broadcasts, else theta."""
        return self.theta if self.downlink is None else self.downlink.theta_tilde

    @property
    def size(self) -> int:
        return self.theta.size

    # ------------------------------------------------------------------ what a worker is sent

    def instruction(self, worker: WorkerKey) -> Instruction | None:
        """The rule's server half for ``worker`` (threshold, forced upload, or ``None`` for no contact), with a
        forced reset upload on top whenever the worker needs one, whatever the half said."""
        record = self.record(worker)
        instruction = self.rule.instruct(self, record)
        if not record.needs_reset:
            return instruction
        threshold = 0.0 if instruction is None else instruction.threshold
        return Instruction(threshold=threshold, force_upload=True, reset=True)

    def broadcast(self, worker: WorkerKey) -> Broadcast:
        """What ``worker`` receives this round: theta (one-way), or what brings its ``theta_tilde`` up to date."""
        if self.downlink is None:
            return Broadcast(version=NO_VERSION, theta=self.theta)
        record = self.workers.get(worker)
        return self.downlink.broadcast(NO_VERSION if record is None else record.theta_version)

    def restore(self, worker: WorkerKey) -> Restore | None:
        """The :class:`Restore` to send ``worker`` this round, or ``None`` (its sync state is not ``RESTORE``)."""
        record = self.workers.get(worker)
        if record is None or record.sync is not Sync.RESTORE:
            return None
        held = {} if record.upload_iterate is None else dict.fromkeys(self._mirrored, record.upload_iterate)
        return Restore(copy=to_numpy(record.copy), version=record.version, error_sq=record.error_sq, held=held)

    def checksum(self, worker: WorkerKey) -> int:
        """The checksum ``worker``'s state must have if it agrees with the server (:meth:`WorkerState.checksum`):
        its copy (zeros before the first upload) and, two-way, the current ``theta_tilde``."""
        record = self.workers.get(worker)
        copy = np.zeros_like(self.theta) if record is None or record.copy is None else to_numpy(record.copy)
        return state_checksum(copy, self._theta_tilde)

    def upload_checksum(self, new_copy: np.ndarray) -> int:
        """The checksum of a worker's state after an upload that makes ``new_copy``."""
        return state_checksum(to_numpy(new_copy), self._theta_tilde)

    @property
    def _theta_tilde(self) -> np.ndarray | None:
        return None if self.downlink is None else self.downlink.theta_tilde

    def expected_version(self, worker: WorkerKey, upload: bool) -> int:
        """The version ``worker`` must report after this round: one more than the server counts on an upload
        (1 after a reset), the same on a skip."""
        record = self.record(worker)
        known = 0 if record.needs_reset else record.version
        return known + 1 if upload else known

    # ------------------------------------------------------------------ applying what came back

    def decode(self, worker: WorkerKey, payload: bytes) -> np.ndarray:
        """The worker's new ``Q_m(theta^k)`` from its payload.

        Raises :class:`~laq_fl.errors.PayloadError` and changes nothing if the payload is malformed, or if the copy
        it makes is not finite (a finite innovation added to the copy can overflow the run's dtype).
        """
        record = self.record(worker)
        previous = None if record.needs_reset else record.copy  # the worker was told to reset
        decoded = like(self.compressor.decompress(payload, self.size), self.aggregate)
        with np.errstate(over="ignore"):
            new_copy = self.memory.reconstruct(previous, decoded, self.theta.dtype)
        if not all_finite(new_copy):
            raise PayloadError(f"the copy this payload makes overflows {new_copy.dtype}")
        return new_copy

    def payload_bits(self, payload: bytes) -> int:
        return self.compressor.payload_bits(payload, self.size)

    def accept(self, worker: WorkerKey, payload: bytes, error_sq: float = 0.0) -> None:
        """Decode a payload and fold it in (:meth:`decode` then :meth:`commit`)."""
        self.commit(worker, self.decode(worker, payload), error_sq)

    def commit(self, worker: WorkerKey, new_copy: np.ndarray, error_sq: float = 0.0) -> None:
        """Replace the worker's copy: ``nabla += Q_m(theta^k) - Q_m(theta_hat_m)`` (4); resets its clock.
        ``error_sq`` is the ``||eps_hat_m||^2`` the worker reported with the upload (kept for :class:`Restore`)."""
        record = self.record(worker)
        record.version = self.expected_version(worker, upload=True)
        record.error_sq = float(error_sq)
        previous = record.copy
        if self.keeps_upload_iterates:
            self._record_upload_iterate(record, previous, new_copy)
        self.aggregate += new_copy
        if previous is not None:
            self.aggregate -= previous
        record.copy = new_copy
        record.skip_clock = 0
        record.sync = Sync.IN_SYNC

    def _record_upload_iterate(self, record: WorkerRecord, previous: np.ndarray | None, new_copy: np.ndarray) -> None:
        iterate = self.iterate
        last = record.upload_iterate
        if previous is not None and last is not None and record.sync is not Sync.RESET:
            moved = norm(iterate.astype(np.float64) - last)
            if moved > 0:
                change = norm(cast(new_copy, np.float64) - previous)
                record.smoothness = max(record.smoothness or 0.0, change / moved)
        record.upload_iterate = iterate.copy()

    def delivered(self, worker: WorkerKey) -> None:
        """``worker``'s reply was accepted: it holds the current ``theta_tilde`` (and any restore it was sent)."""
        record = self.record(worker)
        if self.downlink is not None:
            record.theta_version = self.downlink.version
        if record.sync is Sync.RESTORE:
            record.sync = Sync.IN_SYNC

    def skip(self, worker: WorkerKey) -> None:
        """The worker uploaded nothing (or was not contacted): keep its stale copy, advance its clock."""
        self.record(worker).skip_clock += 1

    def lost(self, worker: WorkerKey) -> None:
        """A reply from ``worker`` was lost or rejected: reuse its stale copy this round, reset it next round
        (and, two-way, send the full ``theta_tilde``: the server cannot know what the worker applied)."""
        record = self.record(worker)
        record.sync = Sync.NEW if record.copy is None else Sync.RESET
        record.theta_version = NO_VERSION

    def state_differs(self, worker: WorkerKey) -> None:
        """``worker`` holds another state than the server's copy, and did not change it this round (it said so,
        or it is a new node for that worker): send it a :class:`Restore` with its next message, and the full
        ``theta_tilde`` (two-way). A worker that needs a reset anyway gets the reset."""
        record = self.record(worker)
        record.theta_version = NO_VERSION
        if record.sync in (Sync.IN_SYNC, Sync.RESTORE):
            record.sync = Sync.RESTORE

    def taken_over(self, worker: WorkerKey, identity: NodeIdentity) -> None:
        """A node newly serves ``worker`` and says it holds ``identity``'s version and checksum: restore it unless
        that is the server's state; either way its ``theta_tilde`` version is unknown (send it in full)."""
        record = self.workers.get(worker)
        if record is not None and record.copy is not None and (identity.version, identity.checksum) != (
                record.version, self.checksum(worker)):
            self.state_differs(worker)
        elif record is not None:
            record.theta_version = NO_VERSION

    def forget(self, worker: WorkerKey) -> None:
        """Drop a worker's record (a node that is gone); its next upload is forced and starts from zero."""
        record = self.workers.pop(worker, None)
        if record is not None and record.copy is not None:
            self.aggregate -= record.copy

    # ------------------------------------------------------------------ the step

    def step(self) -> np.ndarray:
        """``theta^{k+1} = theta^k - alpha nabla^k`` (4); records the parameter difference for (7a) and, two-way,
        moves ``theta_tilde``.

        Raises :class:`~laq_fl.errors.NonFiniteError`, changing nothing, when ``theta^{k+1}`` is not finite
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

    # ------------------------------------------------------------------ checkpoints

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as plain arrays, for a checkpoint: theta, the aggregate, the recent differences, the
        iteration, ``theta_tilde`` and its version (two-way), and one column per :class:`WorkerRecord` field
        (:func:`~laq_fl.protocol.record_columns`) with a row per worker (in ``workers`` order, keys as ``str``):
        vectors as rows of a matrix with a ``has-<column>`` mask, ``sync`` as its name, a missing smoothness as NaN.
        Not kept: the downlink's recent innovations (after a restore, every worker gets the full ``theta_tilde``,
        which changes bytes, not the iterates)."""
        workers = sorted(self.workers, key=str)
        records = [self.workers[worker] for worker in workers]
        arrays = {
            "theta": self.theta,
            "aggregate": to_numpy(self.aggregate),
            "recent-sq-diffs": np.asarray(self.recent_sq_diffs, np.float64),
            "iteration": np.asarray(self.iteration, np.int64),
            WORKERS_COLUMN: np.asarray([str(worker) for worker in workers]),
        }
        zeros = np.zeros_like(self.theta)
        for name, column, kind in record_columns():
            values = [getattr(record, name) for record in records]
            if kind == "vector":
                arrays[f"has-{column}"] = np.asarray([value is not None for value in values], bool)
                rows = [zeros if value is None else to_numpy(value) for value in values]
                arrays[column] = np.asarray(rows, self.theta.dtype).reshape(len(rows), self.size)
            elif kind == "sync":
                arrays[column] = np.asarray([value.value for value in values], dtype=str)
            elif kind == "optional-float":
                arrays[column] = np.asarray([np.nan if value is None else value for value in values], np.float64)
            else:
                arrays[column] = np.asarray(values, np.int64 if kind == "int" else np.float64)
        if self.downlink is not None:
            arrays.update(self.downlink.to_arrays())
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: AlgorithmConfig, num_workers: int, key=int,
                    device: object = None) -> ServerState:
        """Inverse of :meth:`to_arrays`; ``key`` turns the stored ``str`` worker keys back (``int`` for partitions,
        which must lie in ``0..num_workers - 1``).

        A worker whose row cannot be read back (a key that is not a worker's or comes twice, a column missing or
        misshapen, a copy or iterate not finite, a negative version or clock, an unknown sync state) is treated as
        lost: it is left out, and its next contact is a reset upload; a warning names it. The stored aggregate is
        kept only if it is the sum of the copies that remain (to float64 rounding); otherwise, a row left out or the
        aggregate itself damaged, it is summed again from them (in key order), with a warning: the lazy aggregate is
        always the sum of the copies.

        Raises ``KeyError`` for a missing top-level array (theta, the aggregate, ...) and ``ValueError`` when theta
        (or theta_tilde) is not a finite flat float vector.
        """
        theta = np.asarray(arrays["theta"])
        if theta.dtype.kind == "f" and not np.isfinite(theta).all():
            raise ValueError("theta is not finite")
        state = cls(theta, config, num_workers, device)
        state.recent_sq_diffs.extend(float(value) for value in arrays["recent-sq-diffs"])
        state.iteration = int(arrays["iteration"])
        if state.downlink is not None:
            theta_tilde = np.array(arrays["theta-tilde"], state.theta.dtype)
            if theta_tilde.shape != state.theta.shape or not np.isfinite(theta_tilde).all():
                raise ValueError("theta_tilde is not a finite vector of theta's size")
            state.downlink.theta_tilde = theta_tilde
            state.downlink.version = int(arrays["theta-version"])
        unreadable = []
        for row, name in enumerate(str(name) for name in arrays.get(WORKERS_COLUMN, [])):
            try:
                worker = key(name)
                if isinstance(worker, int) and not 0 <= worker < num_workers:
                    raise ValueError(f"worker {worker} is outside 0..{num_workers - 1}")
                if worker in state.workers:
                    raise ValueError("a second row for one worker")
                state.workers[worker] = state._record_from(arrays, row)
            except (KeyError, IndexError, TypeError, ValueError) as error:
                unreadable.append(f"{name} ({type(error).__name__}: {error})")
        if unreadable:
            logger.warning("checkpoint: %d worker row(s) cannot be read back and are reset: %s", len(unreadable),
                           "; ".join(unreadable))
        summed = np.zeros(state.size, np.float64)
        for worker in sorted(state.workers, key=str):
            if state.workers[worker].copy is not None:
                summed += to_numpy(state.workers[worker].copy)
        stored = np.asarray(arrays["aggregate"], np.float64)
        scale = float(np.max(np.abs(summed), initial=1.0))
        if stored.shape == summed.shape and np.allclose(stored, summed, rtol=1e-9, atol=1e-12 * scale):
            aggregate = np.array(stored)  # the very bits the run had: a resumed run goes on exactly
        else:
            if not unreadable:
                logger.warning("checkpoint: the lazy aggregate is not the sum of the workers' copies (damaged?); "
                               "it is summed again from them")
            aggregate = summed
        state.aggregate = like(aggregate, state.aggregate)
        return state

    def _record_from(self, arrays: dict[str, np.ndarray], row: int) -> WorkerRecord:
        values = {}
        for name, column, kind in record_columns():
            if kind == "vector":
                if not bool(arrays[f"has-{column}"][row]):
                    values[name] = None
                    continue
                vector = np.array(arrays[column][row], self.theta.dtype)
                if vector.shape != self.theta.shape or not np.isfinite(vector).all():
                    raise ValueError(f"{column} is not a finite vector of {self.size} values")
                values[name] = like(vector, self.aggregate) if name == "copy" else vector
            elif kind == "sync":
                values[name] = Sync(str(arrays[column][row]))
            elif kind == "optional-float":
                value = float(arrays[column][row])
                values[name] = value if np.isfinite(value) else None
            else:
                values[name] = (int if kind == "int" else float)(arrays[column][row])
        record = WorkerRecord(**values)
        if min(record.version, record.skip_clock) < 0 or not (np.isfinite(record.error_sq) and record.error_sq >= 0):
            raise ValueError(f"version {record.version}, clock {record.skip_clock} or error-sq {record.error_sq} is "
                             "not a worker's")
        if (record.copy is None) != (record.sync is Sync.NEW):
            raise ValueError(f"sync {record.sync.value!r} with{'out' if record.copy is None else ''} a copy")
        if self.downlink is None:
            record = dataclasses.replace(record, theta_version=NO_VERSION)
        return record
