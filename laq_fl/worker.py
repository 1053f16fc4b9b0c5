"""The worker side of LAQ: its memory and one round of Algorithm 2 (steps 6-13)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laq_fl.codec import Upload, encode_upload
from laq_fl.quantizer import quantize_innovation
from laq_fl.rule import may_skip

Q_HAT_KEY = "q-hat"
LAST_ERROR_SQ_KEY = "last-error-sq"


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
    """

    q_hat: np.ndarray
    last_error_sq: float = 0.0

    @classmethod
    def zeros(cls, size: int, dtype: np.dtype | type = np.float32) -> WorkerMemory:
        """The state before the first upload: ``Q_hat = 0``, ``eps_hat = 0``."""
        return cls(q_hat=np.zeros(size, dtype), last_error_sq=0.0)

    def reset(self) -> None:
        """Forget the last upload, as the server does for a worker whose upload it lost."""
        self.q_hat = np.zeros_like(self.q_hat)
        self.last_error_sq = 0.0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``context.state`` or a checkpoint (one copy of ``Q_hat``)."""
        return {Q_HAT_KEY: self.q_hat, LAST_ERROR_SQ_KEY: np.asarray(self.last_error_sq, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> WorkerMemory:
        return cls(q_hat=np.asarray(arrays[Q_HAT_KEY]), last_error_sq=float(arrays[LAST_ERROR_SQ_KEY]))


def worker_round(memory: WorkerMemory, grad: np.ndarray, bits: int, instruction: Instruction) -> Upload | None:
    """Quantize the innovation (5)-(6), apply rule (7a)-(7b), and return the upload or ``None`` for a skip.

    On upload the memory moves to the new ``Q`` and its error; on a skip it is unchanged,
    just as the server keeps its stale copy.
    """
    if instruction.reset:
        memory.reset()
    quantization = quantize_innovation(grad, memory.q_hat, bits)
    error_sq = quantization.error_sq
    if not instruction.force_upload:
        innovation = quantization.value.astype(np.float64)
        innovation -= memory.q_hat
        if may_skip(float(np.dot(innovation, innovation)), instruction.threshold, error_sq, memory.last_error_sq):
            return None
    memory.q_hat = quantization.value
    memory.last_error_sq = error_sq
    return encode_upload(quantization, bits)
