"""Memories: what a worker compresses, and what both sides make of the decoded vector (GRACE's ``Memory``).

A compressor turns a vector into bytes and back; a memory decides which vector that is and keeps what
must survive between rounds. Every member of the family holds ``Q_hat_m``, the copy of worker ``m``'s last
upload that the server keeps in its lazy aggregate; the memories differ in how they use it:

=====================  ===============================  ==============================  ==================
name                   compressed vector                new copy (worker and server)    worker-only state
=====================  ===============================  ==============================  ==================
``none``               ``g``                            ``C(g)``                        --
``reference``          ``g - Q_hat`` (the innovation)   ``Q_hat + C(g - Q_hat)``        --
``error-feedback``     ``v = g + e``                    ``C(v)``                        ``e <- v - C(v)``
=====================  ===============================  ==============================  ==================

``reference`` is LAQ's (eq. 5-6: the innovation is quantized against the last upload, and both sides
update identical copies); ``error-feedback`` is EF-SignSGD's and DGC's (the residual stays on the worker).
A memory is one object shared by every worker; what it keeps per worker it declares in ``state_arrays``
(:mod:`laq_fl.part_state`), and the worker holds those arrays for it. On a skip nothing moves, on either side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from laq_fl.arrays import cast
from laq_fl.part_state import HoldsState, StateArray


class Memory(ABC):
    """How the compressed vector and the new copy are formed. One instance serves every worker: per-worker
    state is declared in :attr:`state_arrays` and lives in the worker's ``held`` arrays."""

    name: ClassVar[str]
    state_arrays: ClassVar[tuple[StateArray, ...]] = ()
    """The arrays this memory keeps per worker (:class:`~laq_fl.part_state.StateArray`)."""
    keeps_residual: ClassVar[bool] = False
    """True when what it keeps must move every round (a residual): a rule that skips would lose the skipped
    gradient, so such a memory needs a rule that never skips."""

    @abstractmethod
    def compensate(self, grad: np.ndarray, state: HoldsState) -> np.ndarray:
        """The float64 vector to compress, shape ``(p,)``, from the gradient (float64) and the worker's state."""

    def reconstruct(self, previous: np.ndarray | None, decoded: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The new ``Q_hat`` in ``dtype`` from the previous copy (``None``: none yet) and the decoded vector
        (numpy arrays, or torch tensors on one device, :mod:`laq_fl.arrays`).

        Worker and server both call this, so their copies agree bit for bit.
        """
        return cast(decoded, dtype)

    def update(self, state: HoldsState, target: np.ndarray, new_copy: np.ndarray) -> None:  # noqa: B027 - a hook
        """After an upload: update worker-only state (``target`` is what was compressed); most keep none."""


class NoMemory(Memory):
    """The gradient itself is compressed; the copy is what was decoded."""

    name = "none"

    def compensate(self, grad: np.ndarray, state: HoldsState) -> np.ndarray:
        return grad


class ReferenceCopy(Memory):
    """LAQ's memory: compress the innovation ``g - Q_hat``, then ``Q_hat <- Q_hat + C(g - Q_hat)`` (eq. 6)."""

    name = "reference"

    def compensate(self, grad: np.ndarray, state: HoldsState) -> np.ndarray:
        return grad - state.copy

    def reconstruct(self, previous: np.ndarray | None, decoded: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if previous is None:
            return cast(decoded, dtype)
        return cast(decoded + previous, dtype)


class ErrorFeedback(Memory):
    """Compress ``v = g + e``; keep ``e <- v - Q`` on the worker (Karimireddy et al. 2019; DGC's accumulation)."""

    name = "error-feedback"
    residual = StateArray("residual", "float64", on_device=True)
    """``e``, float64, where the gradient is."""
    state_arrays = (residual,)
    keeps_residual = True

    def compensate(self, grad: np.ndarray, state: HoldsState) -> np.ndarray:
        residual = state.held.get(self.residual.name)
        return grad if residual is None else grad + residual

    def update(self, state: HoldsState, target: np.ndarray, new_copy: np.ndarray) -> None:
        # Against the copy the server holds (after rounding to its dtype), so nothing is lost or counted twice.
        state.held[self.residual.name] = target - new_copy


MEMORIES: dict[str, Memory] = {memory.name: memory for memory in (NoMemory(), ReferenceCopy(), ErrorFeedback())}
"""Registry: name -> memory."""


def memory_named(name: str) -> Memory:
    """The registered memory ``name``; raises ``KeyError`` naming the registered ones."""
    try:
        return MEMORIES[name]
    except KeyError:
        raise KeyError(f"unknown memory {name!r}; registered: {', '.join(MEMORIES)}") from None
