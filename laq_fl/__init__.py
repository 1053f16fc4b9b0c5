"""laq-fl: Lazily Aggregated Quantized gradients (Sun, Chen, Giannakis, Yang, NeurIPS 2019) and its family.

A member of the family is a compressor (:mod:`laq_fl.compressors`), a memory (:mod:`laq_fl.memory`), a skip
rule (:mod:`laq_fl.skip_rules`) and a gradient oracle, combined in :data:`laq_fl.config.ALGORITHMS`. The math
lives here with no Flower import; ``client_app.py`` and ``server_app.py`` adapt it to Flower.
"""

from laq_fl.codec import PayloadError, pack_levels, unpack_levels
from laq_fl.compressors import (
    COMPRESSORS,
    Compressed,
    Compressor,
    NonFiniteError,
    build_compressor,
    compression_rng,
    register_compressor,
)
from laq_fl.config import ALGORITHMS, AlgorithmConfig, AlgorithmSpec, ConfigError, ProblemConfig, register_algorithm
from laq_fl.driver import IterationRecord, RunResult, run_in_process
from laq_fl.memory import MEMORIES, Memory
from laq_fl.server_state import ServerState
from laq_fl.skip_rules import RULES, Evidence, Instruction, SkipRule, default_xi, lazy_threshold
from laq_fl.worker import WorkerParts, WorkerState, local_round, worker_round

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
    "RunResult",
    "ServerState",
    "SkipRule",
    "WorkerParts",
    "WorkerState",
    "build_compressor",
    "compression_rng",
    "default_xi",
    "lazy_threshold",
    "local_round",
    "pack_levels",
    "register_algorithm",
    "register_compressor",
    "run_in_process",
    "unpack_levels",
    "worker_round",
]
