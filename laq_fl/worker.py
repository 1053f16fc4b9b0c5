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

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from laq_fl.arrays import all_finite, as_float64, cast, is_tensor, like, squared_norm, to_numpy, zeros_like
from laq_fl.compressors import Compressor
from laq_fl.downlink import NO_VERSION, Broadcast, receive, state_checksum
from laq_fl.errors import NonFiniteError, StaleIterateError
from laq_fl.memory import Memory
from laq_fl.part_state import StateArray, declared
from laq_fl.skip_rules import Evidence, Instruction, WorkerHalf

COPY_KEY = "copy"
LAST_ERROR_SQ_KEY = "last-error-sq"
VERSION_KEY = "version"
THETA_TILDE_KEY = "theta-tilde"
THETA_VERSION_KEY = "theta-version"
SCALAR_KEYS = (LAST_ERROR_SQ_KEY, VERSION_KEY, THETA_VERSION_KEY)
"""The shared state's scalars; every other array of :meth:`WorkerState.to_arrays` has shape ``(p,)``."""


class GradientOracle(Protocol):
    def loss_and_gradient(self, theta: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]: ...


@dataclass
class WorkerState:
    """Worker m's state between rounds: the shared part every member keeps, plus the arrays its parts declare.
    While a worker computes on a device (:meth:`to_device`), ``copy`` and the parts' ``on_device`` arrays are torch
    tensors there; :meth:`to_arrays` and :meth:`checksum` read them back to the CPU.

    Attributes
    ----------
    copy
        ``Q_hat_m``, the worker's last upload as the server rebuilt it (shape ``(p,)``, the run's dtype);
        the server holds the same copy, bit for bit.
    last_error_sq
        ``||eps_hat_m||^2 = ||g - Q||^2`` at the last upload (its gradient against what was rebuilt), for (7a).
    version
        Uploads since the last reset; the server counts the same per worker and names it in every instruction, so
        a worker that lost its state (or holds another) says so instead of computing (:mod:`laq_fl.flower.messages`).
    held
        The parts' own arrays by :attr:`~laq_fl.part_state.StateArray.name` (error feedback's ``residual``,
        LASG-WK2's ``theta-hat``), each of shape ``(p,)``; absent until the part first sets it.
    theta_tilde
        Two-way broadcasts only: the iterate this worker holds (shape ``(p,)``, the run's dtype), equal to the
        server's ``theta_tilde`` at ``theta_version`` (:mod:`laq_fl.downlink`).
    theta_version
        The version of ``theta_tilde``; :data:`~laq_fl.downlink.NO_VERSION` when the worker holds none.
    """

    copy: np.ndarray
    last_error_sq: float = 0.0
    version: int = 0
    held: dict[str, Any] = field(default_factory=dict)
    theta_tilde: np.ndarray | None = None
    theta_version: int = NO_VERSION

    @classmethod
    def zeros(cls, size: int, dtype: np.dtype | type = np.float32) -> WorkerState:
        """The state before the first upload: ``Q_hat = 0``, ``eps_hat = 0``, version 0, no part arrays."""
        return cls(copy=np.zeros(size, dtype))

    def reset(self) -> None:
        """Forget every upload since the last reset, as the server does for a worker whose reply it lost
        (``theta_tilde`` stays: a full broadcast replaces it)."""
        self.copy = zeros_like(self.copy)
        self.last_error_sq = 0.0
        self.held = {}
        self.version = 0

    def restore(self, copy: np.ndarray, version: int, error_sq: float, held: Mapping[str, np.ndarray] | None = None
                ) -> None:
        """Take the server's copy of this worker's state (:class:`~laq_fl.protocol.Restore`): ``Q_hat``, the
        version, ``||eps_hat||^2`` and the part arrays the server keeps (``theta_hat``). ``theta_tilde`` stays (the
        broadcast that comes with a restore is the full iterate); the other part arrays (an error-feedback residual,
        which the server never sees) restart empty.

        Raises ``ValueError``, changing nothing, when ``copy`` does not have this state's shape and dtype or a held
        array not its shape.
        """
        copy = np.asarray(copy)
        reference = to_numpy(self.copy)
        if copy.shape != reference.shape or copy.dtype != reference.dtype:
            raise ValueError(f"a restored Q_hat must be {reference.dtype} of shape {reference.shape}, got {copy.dtype} "
                             f"{copy.shape}")
        held = dict(held or {})
        for name, value in held.items():
            if np.shape(value) != reference.shape:
                raise ValueError(f"a restored {name} must have shape {reference.shape}, got {np.shape(value)}")
        self.copy = like(np.array(copy, copy=True), self.copy)
        self.version = int(version)
        self.last_error_sq = float(error_sq)
        self.held = {name: np.array(value, copy=True) for name, value in held.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``context.state`` or a checkpoint: the shared keys (``copy``, ``last-error-sq``,
        ``version``; two-way: ``theta-tilde``, ``theta-version``) and every held array under its name."""
        arrays = {
            COPY_KEY: to_numpy(self.copy),
            LAST_ERROR_SQ_KEY: np.asarray(self.last_error_sq, np.float64),
            VERSION_KEY: np.asarray(self.version, np.int64),
        }
        arrays.update({name: to_numpy(value) for name, value in self.held.items()})
        if self.theta_tilde is not None:
            arrays[THETA_TILDE_KEY] = self.theta_tilde
            arrays[THETA_VERSION_KEY] = np.asarray(self.theta_version, np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> WorkerState:
        """Inverse of :meth:`to_arrays`: every key that is not a shared one is a part's held array.

        Raises ``KeyError`` for a missing shared key and ``ValueError`` when the arrays do not make one state
        (a vector not of ``copy``'s size, a scalar that is not one)."""
        copy = np.asarray(arrays[COPY_KEY])
        if copy.ndim != 1:
            raise ValueError(f"Q_hat must be a vector, got shape {copy.shape}")
        for key, value in arrays.items():
            expected = () if key in SCALAR_KEYS else copy.shape
            if np.shape(value) != expected:
                raise ValueError(f"{key!r} has shape {np.shape(value)}, expected {expected}")
        shared = {COPY_KEY, *SCALAR_KEYS, THETA_TILDE_KEY}
        theta_tilde = arrays.get(THETA_TILDE_KEY)
        return cls(
            copy=copy,
            last_error_sq=float(arrays[LAST_ERROR_SQ_KEY]),
            version=int(arrays[VERSION_KEY]),
            held={key: np.asarray(value) for key, value in arrays.items() if key not in shared},
            theta_tilde=None if theta_tilde is None else np.asarray(theta_tilde),
            theta_version=int(arrays[THETA_VERSION_KEY]) if theta_tilde is not None else NO_VERSION,
        )

    def checksum(self) -> int:
        """CRC-32 of ``Q_hat`` and ``theta_tilde`` (:func:`~laq_fl.downlink.state_checksum`); the server computes
        the same from its copies."""
        return state_checksum(to_numpy(self.copy), self.theta_tilde)

    def to_device(self, device: object, held: Iterable[str] = ()) -> None:
        """Hold ``copy`` and the ``held`` arrays named as torch tensors on ``device`` (a ``torch.device``), where the
        gradient is."""
        import torch

        def moved(value: Any) -> Any:
            if is_tensor(value) and value.device == device:
                return value
            return torch.as_tensor(to_numpy(value), device=device).clone()

        self.copy = moved(self.copy)
        for name in held:
            if self.held.get(name) is not None:
                self.held[name] = moved(self.held[name])

    def receive(self, broadcast: Broadcast, compressor: Compressor | None = None) -> np.ndarray:
        """The iterate to compute at: ``theta^k`` of a one-way broadcast, else ``theta_tilde`` after applying it
        (kept, with its version). ``compressor`` decodes innovations. Raises
        :class:`~laq_fl.errors.StaleIterateError` or :class:`~laq_fl.errors.PayloadError`, changing nothing,
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

    @functools.cached_property
    def state_arrays(self) -> tuple[StateArray, ...]:
        """The arrays the three parts keep per worker (:func:`~laq_fl.part_state.declared`), worked out once: every
        round asks for them on every node."""
        return declared((self.compressor, self.memory, self.rule))


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
    Raises :class:`~laq_fl.errors.NonFiniteError`, changing nothing, for a NaN or inf gradient or one
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

    A rule that needs more evidence (LASG-WK2's gradient at ``theta_hat_m`` on the same minibatch) computes it
    through :meth:`~laq_fl.skip_rules.WorkerHalf.extra_evidence`, and after an upload updates its own arrays
    (:meth:`~laq_fl.skip_rules.WorkerHalf.uploaded`). Returns ``f_m(theta^k)`` (on the batch) and the payload or
    ``None``.
    """
    loss, grad = objective.loss_and_gradient(theta, batch)
    if is_tensor(grad):  # the objective computes on a device: so does the rest of the round
        state.to_device(grad.device, [array.name for array in parts.state_arrays if array.on_device])
    change = None
    if not instruction.force_upload:
        change = parts.rule.extra_evidence(state, lambda at: objective.loss_and_gradient(at, batch)[1], grad)
    payload = worker_round(state, grad, parts, instruction, same_sample_change=change, rng=rng)
    if payload is not None:
        parts.rule.uploaded(state, theta)
    return loss, payload
