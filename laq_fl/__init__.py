"""laq-fl: Lazily Aggregated Quantized gradients (Sun, Chen, Giannakis, Yang, NeurIPS 2019) and its family.

A member of the family is a compressor (:mod:`laq_fl.compressors`), a memory (:mod:`laq_fl.memory`), a skip
rule (:mod:`laq_fl.skip_rules`) and a gradient oracle, combined in :data:`laq_fl.config.ALGORITHMS`. The math
and the round protocol (:mod:`laq_fl.protocol`) live here with no Flower import; ``client_app.py`` and
``server_app.py`` adapt them to Flower through :mod:`laq_fl.flower`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from laq_fl._lazy import lazy_getattr

# Names load on first use (PEP 562), so that importing a light module (the ClientApp's forwarder to a warm worker,
# laq_fl.flower.warm_worker) does not import torch, which costs seconds in every short-lived flwr-clientapp.
_SOURCES = {
    "laq_fl.codec": ("pack_levels", "unpack_levels"),
    "laq_fl.compressors": ("COMPRESSORS", "Compressed", "Compressor", "build_compressor", "compression_rng",
                           "register_compressor"),
    "laq_fl.config": ("ALGORITHMS", "AlgorithmConfig", "AlgorithmSpec", "ProblemConfig", "register_algorithm"),
    "laq_fl.driver": ("IterationRecord", "RunResult", "run_in_process"),
    "laq_fl.errors": ("ConfigError", "NonFiniteError", "PayloadError", "RunStopped"),
    "laq_fl.memory": ("MEMORIES", "Memory"),
    "laq_fl.part_state": ("StateArray",),
    "laq_fl.protocol": ("RoundStats", "Verdict", "WorkerRecord", "judge"),
    "laq_fl.server_state": ("ServerState",),
    "laq_fl.skip_rules": ("RULES", "Evidence", "Instruction", "SkipRule", "default_xi", "lazy_threshold"),
    "laq_fl.worker": ("WorkerParts", "WorkerState", "local_round", "worker_round"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

if TYPE_CHECKING:
    from laq_fl.codec import pack_levels, unpack_levels
    from laq_fl.compressors import (
        COMPRESSORS,
        Compressed,
        Compressor,
        build_compressor,
        compression_rng,
        register_compressor,
    )
    from laq_fl.config import ALGORITHMS, AlgorithmConfig, AlgorithmSpec, ProblemConfig, register_algorithm
    from laq_fl.driver import IterationRecord, RunResult, run_in_process
    from laq_fl.errors import ConfigError, NonFiniteError, PayloadError, RunStopped
    from laq_fl.memory import MEMORIES, Memory
    from laq_fl.part_state import StateArray
    from laq_fl.protocol import RoundStats, Verdict, WorkerRecord, judge
    from laq_fl.server_state import ServerState
    from laq_fl.skip_rules import RULES, Evidence, Instruction, SkipRule, default_xi, lazy_threshold
    from laq_fl.worker import WorkerParts, WorkerState, local_round, worker_round


__getattr__ = lazy_getattr('laq_fl', _MODULE_OF, globals())


__all__ = [
    "ALGORITHMS",
    "COMPRESSORS",
    "MEMORIES",
    "RULES",
    "AlgorithmConfig",
    "AlgorithmSpec",
    "Compressed",
    "Compressor",
    "ConfigError",
    "Evidence",
    "Instruction",
    "IterationRecord",
    "Memory",
    "NonFiniteError",
    "PayloadError",
    "ProblemConfig",
    "RoundStats",
    "RunResult",
    "RunStopped",
    "ServerState",
    "SkipRule",
    "StateArray",
    "Verdict",
    "WorkerParts",
    "WorkerRecord",
    "WorkerState",
    "build_compressor",
    "compression_rng",
    "default_xi",
    "judge",
    "lazy_threshold",
    "local_round",
    "pack_levels",
    "register_algorithm",
    "register_compressor",
    "run_in_process",
    "unpack_levels",
    "worker_round",
]
