"""The worker side of the family: its state and one round of Algorithm 2 (steps 6-13 of Sun et al. 2019).

One round, whatever the member:

1. On ``reset``, restart from ``Q_hat = 0`` (the server lost the last reply).
2. Form the vector to compress from the gradient and the state (the memory: ``g``, ``g - Q_hat``, ``g + e``).
3. Compress it, and form the copy ``Q`` the server would rebuild from the payload.
4. Unless the upload is forced, ask the rule's worker half whether to skip; on a skip nothing changes.
5. On upload: ``Q_hat <- Q``, remember ``||eps||^2 = ||g - Q||^2`` (and theta_hat for LASG), update the
   memory's own state, count the version, and send the payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from laq_fl.arrays import all_finite, as_float64, cast, is_tensor, like, squared_norm, to_numpy, zeros_like
from laq_fl.compressors import Compressor, NonFiniteError
from laq_fl.downlink import NO_VERSION, Broadcast, StaleIterateError, receive, state_checksum
from laq_fl.memory import Memory
from laq_fl.skip_rules import Evidence, Instruction, WorkerHalf

COPY_KEY = "copy"
LAST_ERROR_SQ_KEY = "last-error-sq"
THETA_HAT_KEY = "theta-hat"
RESIDUAL_KEY = "residual"
VERSION_KEY = "version"
THETA_TILDE_KEY = "theta-tilde"
THETA_VERSION_KEY = "theta-version"


class GradientOracle(Protocol):
    def loss_and_gradient(self, theta: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]: ...


@dataclass
class WorkerState:
    """Worker m's state between rounds: plain arrays and scalars, see :meth:`to_arrays`. While a worker computes
    on a device (:meth:`to_device`), ``copy`` and ``residual`` are torch tensors there; :meth:`to_arrays` and
    :meth:`checksum` read them back to the CPU.

    Attributes
    ----------
    copy
        ``Q_hat_m``, the worker's last upload as the server rebuilt it (shape ``(p,)``, the run's dtype);
        the server holds the same copy, bit for bit.
    last_error_sq
        ``||eps_hat_m||^2 = ||g - Q||^2`` at the last upload (its gradient against what was rebuilt), for (7a).
    theta_hat
        ``theta_hat_m``, the iterate of the last upload; kept only by rules that need it (LASG-WK2).
    residual
        The error-feedback residual ``e`` (float64); kept only by memories that need it.
    version
        Uploads since the last reset; the server counts the same per worker and names it in every instruction, so
        a worker that lost its state (or holds another) says so instead of computing (:mod:`laq_fl.flower.messages`).
    theta_tilde
        Two-way broadcasts only: the iterate this worker holds (shape ``(p,)``, the run's dtype), equal to the
        server's ``theta_tilde`` at ``theta_version`` (:mod:`laq_fl.downlink`).
    theta_version
        The version of ``theta_tilde``; :data:`~laq_fl.downlink.NO_VERSION` when the worker holds none.
    """

    copy: np.ndarray
    last_error_sq: float = 0.0
    theta_hat: np.ndarray | None = None
    residual: np.ndarray | None = None
    version: int = 0
    theta_tilde: np.ndarray | None = None
    theta_version: int = NO_VERSION

    @classmethod
    def zeros(cls, size: int, dtype: np.dtype | type = np.float32) -> WorkerState:
        """The state before the first upload: ``Q_hat = 0``, ``eps_hat = 0``, version 0."""
        return cls(copy=np.zeros(size, dtype))

    def reset(self) -> None:
        """Forget every upload since the last reset, as the server does for a worker whose reply it lost
        (``theta_tilde`` stays: a full broadcast replaces it)."""
        self.copy = zeros_like(self.copy)
        self.last_error_sq = 0.0
        self.theta_hat = None
        self.residual = None
        self.version = 0

    def restore(self, copy: np.ndarray, version: int, error_sq: float, theta_hat: np.ndarray | None = None) -> None:
        """Take the server's copy of this worker's state (:class:`~laq_fl.server_state.Restore`): ``Q_hat``, the
        version, ``||eps_hat||^2`` and ``theta_hat``. ``theta_tilde`` stays (the broadcast that comes with a
        restore is the full iterate); an error-feedback residual, which the server never sees, restarts at zero.

        Raises ``ValueError``, changing nothing, when ``copy`` does not have this state's shape and dtype.
        """
        copy = np.asarray(copy)
        held = to_numpy(self.copy)
        if copy.shape != held.shape or copy.dtype != held.dtype:
            raise ValueError(f"a restored Q_hat must be {held.dtype} of shape {held.shape}, got {copy.dtype} {copy.shape}")
        if theta_hat is not None and np.shape(theta_hat) != held.shape:
            raise ValueError(f"a restored theta_hat must have shape {held.shape}, got {np.shape(theta_hat)}")
        self.copy = like(np.array(copy, copy=True), self.copy)
        self.version = int(version)
        self.last_error_sq = float(error_sq)
        self.theta_hat = None if theta_hat is None else np.array(theta_hat, held.dtype, copy=True)
        self.residual = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``context.state`` or a checkpoint; absent keys are ``None`` fields."""
        arrays = {
            COPY_KEY: to_numpy(self.copy),
            LAST_ERROR_SQ_KEY: np.asarray(self.last_error_sq, np.float64),
            VERSION_KEY: np.asarray(self.version, np.int64),
        }
        if self.theta_hat is not None:
            arrays[THETA_HAT_KEY] = self.theta_hat
        if self.residual is not None:
            arrays[RESIDUAL_KEY] = to_numpy(self.residual)
        if self.theta_tilde is not None:
            arrays[THETA_TILDE_KEY] = self.theta_tilde
            arrays[THETA_VERSION_KEY] = np.asarray(self.theta_version, np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> WorkerState:
        """Inverse of :meth:`to_arrays`."""
        optional = {
            key: None if arrays.get(key) is None else np.asarray(arrays[key])
            for key in (THETA_HAT_KEY, RESIDUAL_KEY, THETA_TILDE_KEY)
        }
        has_tilde = optional[THETA_TILDE_KEY] is not None
        return cls(
            copy=np.asarray(arrays[COPY_KEY]),
            last_error_sq=float(arrays[LAST_ERROR_SQ_KEY]),
            theta_hat=optional[THETA_HAT_KEY],
            residual=optional[RESIDUAL_KEY],
            version=int(arrays[VERSION_KEY]),
            theta_tilde=optional[THETA_TILDE_KEY],
            theta_version=int(arrays[THETA_VERSION_KEY]) if has_tilde else NO_VERSION,
        )

    def checksum(self) -> int:
        """CRC-32 of ``Q_hat`` and ``theta_tilde`` (:func:`~laq_fl.downlink.state_checksum`); the server computes
        the same from its copies."""
        return state_checksum(to_numpy(self.copy), self.theta_tilde)

    def to_device(self, device: object) -> None:
        """Hold ``copy`` and ``residual`` as torch tensors on ``device`` (a ``torch.device``), where the gradient is."""
        import torch

        for name in ("copy", "residual"):
            value = getattr(self, name)
            if value is not None and not (is_tensor(value) and value.device == device):
                setattr(self, name, torch.as_tensor(to_numpy(value), device=device).clone())

    def receive(self, broadcast: Broadcast, compressor: Compressor | None = None) -> np.ndarray:
        """The iterate to compute at: ``theta^k`` of a one-way broadcast, else ``theta_tilde`` after applying it
        (kept, with its version). ``compressor`` decodes innovations. Raises
        :class:`~laq_fl.downlink.StaleIterateError` or :class:`~laq_fl.codec.PayloadError`, changing nothing,
        when the broadcast does not apply to what this worker holds."""
        if broadcast.version == NO_VERSION:
            if broadcast.theta is None:
                raise StaleIterateError("a one-way broadcast must carry the full iterate")
            return broadcast.theta
        self.theta_tilde = receive(broadcast, self.theta_tilde, self.theta_version, compressor)
        self.theta_version = broadcast.version
        return self.theta_tilde


@dataclass(frozen=True)
class WorkerParts:
    """What a worker runs: the compressor, the memory and the rule's worker half."""

    compressor: Compressor
    memory: Memory
    rule: WorkerHalf


def worker_round(
    state: WorkerState,
    grad: np.ndarray,
    parts: WorkerParts,
    instruction: Instruction,
    same_sample_change: float | None = None,
    rng: np.random.Generator | None = None,
) -> bytes | None:
    """Steps 1-5 above for a gradient of shape ``(p,)``; returns the payload, or ``None`` for a skip.

    ``grad`` is a numpy array, or a torch tensor on the device where ``state`` holds its copy (:meth:`WorkerState.to_device`):
    the same arithmetic then runs there, with the same payload (:mod:`laq_fl.arrays`).

    ``same_sample_change`` is the evidence of rules that need it; ``rng`` feeds random compressors.
    Raises :class:`~laq_fl.compressors.NonFiniteError`, changing nothing, for a NaN or inf gradient or one
    the compressor cannot represent.
    """
    gradient = as_float64(grad)
    # A reset starts from Q_hat = 0, but the state changes only once the round has gone through:
    # a refused gradient (NaN, or one the compressor cannot represent) leaves it as it was.
    base = WorkerState(copy=zeros_like(state.copy)) if instruction.reset else state
    target = parts.memory.compensate(gradient, base)
    compressed = parts.compressor.compress(target, rng)
    with np.errstate(over="ignore"):
        new_copy = parts.memory.reconstruct(base.copy, compressed.value, base.copy.dtype)
    if not all_finite(new_copy):  # the server would refuse this copy: say so instead of sending it
        raise NonFiniteError(f"the new copy Q_hat + Q(innovation) overflows {new_copy.dtype}")
    error = gradient - new_copy
    error_sq = squared_norm(error)
    if instruction.reset:
        state.reset()
    if not instruction.force_upload:
        innovation = new_copy - cast(state.copy, np.float64)
        evidence = Evidence(squared_norm(innovation), error_sq, state.last_error_sq, same_sample_change)
        if parts.rule.skip(evidence, instruction.threshold):
            return None
    parts.memory.update(state, target, new_copy)
    state.copy = new_copy
    state.last_error_sq = error_sq
    state.version += 1
    return compressed.payload


def local_round(
    state: WorkerState,
    objective: GradientOracle,
    theta: np.ndarray,
    parts: WorkerParts,
    instruction: Instruction,
    *,
    batch: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[float, bytes | None]:
    """One worker's round: the gradient at theta^k (on ``batch`` for minibatch members), then :func:`worker_round`.

    A rule that needs the same-sample evidence costs a second gradient, at ``theta_hat_m`` on the same
    minibatch, and keeps theta^k when the worker uploads. Returns ``f_m(theta^k)`` (on the batch) and the
    payload or ``None``.
    """
    loss, grad = objective.loss_and_gradient(theta, batch)
    if is_tensor(grad):  # the objective computes on a device: so does the rest of the round
        state.to_device(grad.device)
    same_sample = parts.rule.needs_same_sample
    change = None
    if same_sample and not instruction.force_upload:
        if state.theta_hat is None:  # nothing to compare with: upload
            change = float("inf")
        else:
            _, stale = objective.loss_and_gradient(state.theta_hat, batch)
            stale -= grad
            change = squared_norm(stale)
    payload = worker_round(state, grad, parts, instruction, same_sample_change=change, rng=rng)
    if payload is not None and same_sample:
        state.theta_hat = np.array(theta, copy=True)
    return loss, payload
