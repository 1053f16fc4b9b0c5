"""laq-fl: Lazily Aggregated Quantized gradients (Sun, Chen, Giannakis, Yang, NeurIPS 2019) and its family.

The math lives here with no Flower import; ``client_app.py`` and ``server_app.py`` adapt it to Flower.
"""

from laq_fl.codec import PayloadError, Upload, decode_upload, encode_upload, pack_levels, payload_bits, unpack_levels
from laq_fl.compressors import Compressor, compression_rng
from laq_fl.config import ALGORITHMS, AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.driver import IterationRecord, RunResult, run_in_process
from laq_fl.quantizer import FULL_PRECISION, Quantization, dequantize, quantize_innovation
from laq_fl.rule import default_xi, lazy_threshold, may_skip, upload_forced
from laq_fl.server import ServerMemory
from laq_fl.worker import Instruction, WorkerMemory, local_round, worker_round

__all__ = [
    "ALGORITHMS",
    "FULL_PRECISION",
    "AlgorithmConfig",
    "Compressor",
    "ConfigError",
    "Instruction",
    "IterationRecord",
    "PayloadError",
    "ProblemConfig",
    "Quantization",
    "RunResult",
    "ServerMemory",
    "Upload",
    "WorkerMemory",
    "compression_rng",
    "decode_upload",
    "default_xi",
    "dequantize",
    "encode_upload",
    "lazy_threshold",
    "local_round",
    "may_skip",
    "pack_levels",
    "payload_bits",
    "quantize_innovation",
    "run_in_process",
    "unpack_levels",
    "upload_forced",
    "worker_round",
]
