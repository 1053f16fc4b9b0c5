"""Flat vectors as numpy arrays (on the CPU) or torch tensors (on the run's device), and their norms.

The family's arithmetic -- the innovation, the compressed value, the new copy ``Q_hat``, the errors the rule
compares -- is written once against the few operations below, so a worker runs it where its gradient is: in numpy
when the gradient comes back to the CPU, in torch on the device otherwise (:class:`~laq_fl.models.LocalObjective`
with ``gradients_on_device``). Element-wise float64 arithmetic is IEEE-exact in both, so both give the same
payloads and copies bit for bit; only the sums in a squared norm may round differently in the last bits.

Norms: ``np.dot`` and ``np.linalg.norm`` hand long vectors to a multi-threaded BLAS, whose worker threads then
spin beside torch's OpenMP pool: on a 2-core machine that made the driver's MLP iteration 2.99x the bare torch
loop instead of about 1.1x (``scripts/bench_rounds.py``, README "Benchmarks"). ``np.einsum`` sums on the calling thread, and its result
does not depend on how many threads a BLAS would have used, so workers and server agree on every bit.

torch is imported only when a tensor comes in: the forwarding ClientApp (:mod:`laq_fl.flower.warm_worker`) and
the compressors' users on the CPU never pay for it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

Vector = Any
"""A 1-D ``numpy.ndarray`` or ``torch.Tensor``."""


def is_tensor(vector: object) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when nothing has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(vector, torch.Tensor)


def torch_dtype(dtype: Any) -> Any:
    """The torch dtype for a numpy dtype (or a torch dtype, returned as is)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, np.dtype(dtype).name)


def as_float64(vector: Vector) -> Vector:
    """``vector`` in float64 (numpy: a copy in native byte order; torch: on its device)."""
    if is_tensor(vector):
        import torch

        return vector.detach().to(torch.float64)
    return np.asarray(vector).astype(np.float64)


def cast(vector: Vector, dtype: Any) -> Vector:
    """``vector`` in ``dtype`` (a numpy or, for tensors, a torch dtype), rounding to nearest."""
    if is_tensor(vector):
        return vector.to(torch_dtype(dtype))
    return vector.astype(dtype)


def zeros_like(vector: Vector) -> Vector:
    if is_tensor(vector):
        import torch

        return torch.zeros_like(vector)
    return np.zeros_like(vector)


def all_finite(vector: Vector) -> bool:
    if is_tensor(vector):
        import torch

        return bool(torch.isfinite(vector).all())
    return bool(np.isfinite(vector).all())


def to_numpy(vector: Vector | None) -> np.ndarray | None:
    """A numpy array on the CPU (tensors are copied off their device; arrays come back as they are)."""
    if is_tensor(vector):
        return vector.detach().cpu().numpy()
    return vector


def like(vector: np.ndarray, reference: Vector) -> Vector:
    """``vector`` (numpy) where ``reference`` lives: a tensor on its device, or the array itself."""
    if is_tensor(reference):
        import torch

        tensor = torch.as_tensor(np.ascontiguousarray(vector), device=reference.device)
        return tensor.clone() if tensor.device.type == "cpu" else tensor  # on the CPU it would share the array's memory
    return vector


def squared_norm(vector: Vector) -> float:
    """``||x||^2`` of a vector of any float dtype and shape ``(p,)``, accumulated in float64."""
    if is_tensor(vector):
        import torch

        values = vector.detach().to(torch.float64)
        return float(torch.dot(values, values))
    values = np.asarray(vector, np.float64)
    return float(np.einsum("i,i->", values, values))


def norm(vector: Vector) -> float:
    """``||x||_2``: :func:`squared_norm`'s square root."""
    return math.sqrt(squared_norm(vector))
