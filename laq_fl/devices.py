"""Which torch device a run computes on: ``cpu``, ``cuda`` / ``cuda:N``, or ``auto`` (a GPU when torch sees one).

On the device: each worker's features and labels, the local gradients and losses, and the test evaluation. The
gradient comes back to the CPU as float numbers of the run's dtype before compression, so payloads, bits and
bytes do not depend on the device; the values do (a GPU's float32 reductions round differently from the CPU's),
so bit-identity between the Flower app and the driver holds on one device, not across devices.
"""

from __future__ import annotations

import functools

import torch

from laq_fl.errors import ConfigError


def check_cuda(device: str) -> None:
    """Raise :class:`~laq_fl.errors.ConfigError` (key ``device``) unless torch can use CUDA device ``device``."""
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
                          f"built for CUDA {torch.version.cuda}); use device = \"cpu\" or \"auto\"")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")


@functools.lru_cache(maxsize=8)
def resolve_device(device: str) -> torch.device:
    """The torch device for a run config's ``device`` (``auto``: ``cuda`` when available, else ``cpu``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        check_cuda(device)
    return torch.device(device)
