"""The worker side of LAQ: its memory and one round of Algorithm 2 (steps 6-13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from laq_fl.codec import Upload
from laq_fl.compressors import Compressor
from laq_fl.config import RULE_SAME_SAMPLE
from laq_fl.rule import may_skip

Q_HAT_KEY = "q-hat"
LAST_ERROR_SQ_KEY = "last-error-sq"
THETA_HAT_KEY = "theta-hat"


class GradientOracle(Protocol):
    def loss_and_gradient(self, theta: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray]: ...


@dataclass(frozen=True)
class Instruction:
    """What the server tells one worker with theta^k.

    ``threshold`` is the shared part of (7a); ``force_upload`` is (7b) or a non-lazy member;
    ``reset`` asks the worker to restart from ``Q_hat = 0`` because the server lost its last reply.
    """

    threshold: float
    force_upload: bool
    reset: bool = False


@dataclass
class WorkerMemory:
    """Worker m's state between rounds.

    Attributes
    ----------
    q_hat
        ``Q_m(theta_hat_m)``, the last uploaded quantized gradient; the server holds the same copy.
    last_error_sq
        ``||eps_hat_m||^2``, the squared quantization error of that upload, used by (7a).
    theta_hat
        ``theta_hat_m``, the iterate of the last upload; kept only by the same-sample rule (LASG-WK2).
    """

    q_hat: np.ndarray
    last_error_sq: float = 0.0
    theta_hat: np.ndarray | None = None

    @classmethod
    def zeros(cls, size: int, dtype: np.dtype | type = np.float32) -> WorkerMemory:
        """The state before the first upload: ``Q_hat = 0``, ``eps_hat = 0``."""
        return cls(q_hat=np.zeros(size, dtype), last_error_sq=0.0)

    def reset(self) -> None:
        """Forget the last upload, as the server does for a worker whose upload it lost."""
        self.q_hat = np.zeros_like(self.q_hat)
        self.last_error_sq = 0.0
        self.theta_hat = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``context.state`` or a checkpoint (one copy of ``Q_hat``)."""
        arrays = {Q_HAT_KEY: self.q_hat, LAST_ERROR_SQ_KEY: np.asarray(self.last_error_sq, np.float64)}
        if self.theta_hat is not None:
            arrays[THETA_HAT_KEY] = self.theta_hat
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> WorkerMemory:
        theta_hat = arrays.get(THETA_HAT_KEY)
        return cls(
            q_hat=np.asarray(arrays[Q_HAT_KEY]),
            last_error_sq=float(arrays[LAST_ERROR_SQ_KEY]),
            theta_hat=None if theta_hat is None else np.asarray(theta_hat),
        )


def worker_round(
    memory: WorkerMemory,
    grad: np.ndarray,
    compressor: Compressor,
    instruction: Instruction,
    same_sample_change: float | None = None,
    rng: np.random.Generator | None = None,
) -> Upload | None:
    """Quantize the innovation (5)-(6), apply the skip rule, and return the upload or ``None`` for a skip.

    ``compressor`` is LAQ's quantizer (``Compressor("laq", b)``) or a baseline's; the random ones
    (QSGD, sparsification) draw from ``rng``.

    The rule is (7a) unless ``same_sample_change`` is given: then the worker skips when
    ``||grad l(theta^k; xi) - grad l(theta_hat; xi)||^2`` (that value) is at most the threshold
    (LASG-WK2). (7b) and non-lazy members arrive as ``instruction.force_upload``.
    On upload the memory moves to the new ``Q`` and its error; on a skip it is unchanged,
    just as the server keeps its stale copy.
    """
    if instruction.reset:
        memory.reset()
    quantization = compressor.compress(grad, memory.q_hat, rng)
    error_sq = quantization.error_sq
    if not instruction.force_upload:
        if same_sample_change is not None:
            skip = same_sample_change <= instruction.threshold
        else:
            innovation = quantization.value.astype(np.float64)
            innovation -= memory.q_hat
            skip = may_skip(float(np.dot(innovation, innovation)), instruction.threshold, error_sq, memory.last_error_sq)
        if skip:
            return None
    memory.q_hat = quantization.value
    memory.last_error_sq = error_sq
    return compressor.encode(quantization)


def local_round(
    memory: WorkerMemory,
    objective: GradientOracle,
    theta: np.ndarray,
    batch: np.ndarray | None,
    compressor: Compressor,
    rule: str,
    instruction: Instruction,
    rng: np.random.Generator | None = None,
) -> tuple[float, Upload | None]:
    """One worker's round: the gradient at theta^k (on ``batch`` for SGD-type members), then :func:`worker_round`.

    For the same-sample rule the worker also evaluates the gradient at ``theta_hat_m`` on the same
    minibatch (twice the compute), and remembers theta^k when it uploads. Returns ``f_m(theta^k)``
    (on the batch) and the upload or ``None``.
    """
    loss, grad = objective.loss_and_gradient(theta, batch)
    change = None
    if rule == RULE_SAME_SAMPLE and not instruction.force_upload:
        if memory.theta_hat is None:  # nothing to compare with: upload
            change = float("inf")
        else:
            _, stale = objective.loss_and_gradient(memory.theta_hat, batch)
            stale -= grad
            change = float(np.dot(stale.astype(np.float64), stale))
    upload = worker_round(memory, grad, compressor, instruction, same_sample_change=change, rng=rng)
    if upload is not None and rule == RULE_SAME_SAMPLE:
        memory.theta_hat = np.array(theta, copy=True)
    return loss, upload
