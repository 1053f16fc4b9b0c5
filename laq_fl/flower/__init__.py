"""The Flower adapter: strategy, client handler, messages, byte metering and an in-process Grid.

This subpackage is the only part of ``laq_fl`` that imports ``flwr``; the math it calls lives
one level up and runs without Flower.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): a ClientApp served by a warm worker imports only warm_worker, never torch.
_MODULE_OF = {"handle_train": "laq_fl.flower.client", "InProcessGrid": "laq_fl.flower.grid",
              "run_server": "laq_fl.flower.serverapp", "LaqStrategy": "laq_fl.flower.strategy"}

if TYPE_CHECKING:
    from laq_fl.flower.client import handle_train
    from laq_fl.flower.grid import InProcessGrid
    from laq_fl.flower.serverapp import run_server
    from laq_fl.flower.strategy import LaqStrategy


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'laq_fl.flower' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["InProcessGrid", "LaqStrategy", "handle_train", "run_server"]
