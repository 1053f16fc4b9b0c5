"""The Flower adapter: strategy, client handler, messages, byte metering and an in-process Grid.

This subpackage is the only part of ``laq_fl`` that imports ``flwr``; the math it calls lives
one level up and runs without Flower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from laq_fl._lazy import lazy_getattr

# Loaded on first use (PEP 562): a ClientApp served by a warm worker imports only warm_worker, never torch.
_MODULE_OF = {"handle_train": "laq_fl.flower.client", "InProcessGrid": "laq_fl.flower.grid",
              "run_rounds": "laq_fl.flower.serverapp", "run_server": "laq_fl.flower.serverapp",
              "LaqStrategy": "laq_fl.flower.strategy"}

if TYPE_CHECKING:
    from laq_fl.flower.client import handle_train
    from laq_fl.flower.grid import InProcessGrid
    from laq_fl.flower.serverapp import run_rounds, run_server
    from laq_fl.flower.strategy import LaqStrategy


__getattr__ = lazy_getattr('laq_fl.flower', _MODULE_OF, globals())


__all__ = ["InProcessGrid", "LaqStrategy", "handle_train", "run_rounds", "run_server"]
