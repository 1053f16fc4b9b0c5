"""What a part (compressor, memory, rule) keeps per worker between rounds, declared by the part itself.

Every member holds the shared state (``Q_hat``, its version, ``||eps_hat||^2``, and with two-way broadcasts
``theta_tilde``; :class:`~laq_fl.worker.WorkerState`). A part that needs more declares each array in its
``state_arrays``: error feedback its residual ``e``, LASG-WK2's rule the iterate ``theta_hat`` of the last upload.
The worker keeps them in ``WorkerState.held`` under their names, and everything that persists or moves a worker's
state -- ``Context.state`` on a node, the restore a server sends, the move to a GPU -- iterates over the
declarations, so a new part with state touches only its own module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

MODEL_DTYPE = "model"
"""A :attr:`StateArray.dtype` that means the run's dtype (float32 or float64), that of ``Q_hat``."""

SHARED_NAMES = frozenset({"copy", "version", "last-error-sq", "theta-tilde", "theta-version"})
"""Names the shared worker state uses in ``Context.state`` and restores; no part may declare them."""


@dataclass(frozen=True)
class StateArray:
    """One vector of shape ``(p,)`` a part keeps per worker.

    Attributes
    ----------
    name
        Kebab-case; the key in ``WorkerState.held``, ``Context.state`` and a restore.
    dtype
        :data:`MODEL_DTYPE` (the run's dtype) or a numpy float dtype name such as ``"float64"``.
    on_device
        True when the part's arithmetic on it runs where the gradient is (a GPU): it moves there with ``Q_hat``.
    upload_iterate
        True when it is the iterate of the worker's last upload (``theta_hat``): the server then keeps the same
        vector and gives it back in a restore; any other array restarts empty after a restore (the server never
        sees it).
    """

    name: str
    dtype: str = MODEL_DTYPE
    on_device: bool = False
    upload_iterate: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.name) or self.name in SHARED_NAMES:
            raise ValueError(f"a part's state array needs a kebab-case name other than {sorted(SHARED_NAMES)}, "
                             f"got {self.name!r}")
        if self.dtype != MODEL_DTYPE and np.dtype(self.dtype).kind != "f":
            raise ValueError(f"state array {self.name!r}: dtype must be {MODEL_DTYPE!r} or a float dtype, got {self.dtype!r}")


    def numpy_dtype(self, model_dtype: np.dtype | type | str) -> np.dtype:
        """The array's numpy dtype in a run whose parameters are ``model_dtype``."""
        return np.dtype(model_dtype if self.dtype == MODEL_DTYPE else self.dtype)


def declared(parts: Iterable[object]) -> tuple[StateArray, ...]:
    """The state arrays ``parts`` declare (each part's ``state_arrays``, if any), in order.

    Raises ``ValueError`` when two parts declare the same name."""
    arrays: list[StateArray] = []
    for part in parts:
        arrays.extend(getattr(part, "state_arrays", ()))
    names = [array.name for array in arrays]
    if len(set(names)) != len(names):
        raise ValueError(f"two parts declare the same state array: {names}")
    return tuple(arrays)


class HoldsState(Protocol):
    """What a part may read and write of a worker's state: ``Q_hat`` and the declared arrays."""

    copy: Any
    held: dict[str, Any]
