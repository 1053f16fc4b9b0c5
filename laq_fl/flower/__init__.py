"""The Flower adapter: strategy, client handler, messages, byte metering and an in-process Grid.

This subpackage is the only part of ``laq_fl`` that imports ``flwr``; the math it calls lives
one level up and runs without Flower.
"""

from laq_fl.flower.client import handle_train
from laq_fl.flower.grid import InProcessGrid
from laq_fl.flower.serverapp import run_server
from laq_fl.flower.strategy import LaqStrategy

__all__ = ["InProcessGrid", "LaqStrategy", "handle_train", "run_server"]
