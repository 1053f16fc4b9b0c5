"""What travels in the LAQ protocol and how it maps to Flower records (kebab-case keys, named once).

Server -> worker (``train`` message):
    ``theta``        ArrayRecord with theta^k as one float array
    ``instruction``  ConfigRecord: ``iteration`` (k, from 0), ``compressor`` (its spec, e.g. ``"grid bits=4"``),
                     ``memory`` and ``rule`` (registry names), ``batch-size`` (0: full gradient),
                     ``threshold`` (the shared part of the rule), ``force-upload`` (7b, first upload),
                     ``reset`` (restart from ``Q_hat = 0``)

Worker -> server (reply):
    ``metrics``      MetricRecord: ``partition-id``, ``loss`` (f_m at theta^k); kept minimal, it is most of a skip
    ``upload``       ConfigRecord with ``payload`` (the compressor's bytes); absent for a skip

A worker told to upload (``force-upload``) must upload: the server rejects a skip reply to such an
instruction as malformed, keeps the stale copy and resyncs that worker in the next round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from laq_fl.codec import PayloadError
from laq_fl.compressors import Compressor, compressor_from_spec
from laq_fl.memory import memory_named
from laq_fl.skip_rules import Instruction, rule_named
from laq_fl.worker import WorkerParts

THETA = "theta"
INSTRUCTION = "instruction"
METRICS = "metrics"
UPLOAD = "upload"
PAYLOAD = "payload"
ITERATION = "iteration"
COMPRESSOR = "compressor"
MEMORY = "memory"
BATCH_SIZE = "batch-size"
RULE = "rule"
THRESHOLD = "threshold"
FORCE_UPLOAD = "force-upload"
RESET = "reset"
PARTITION_ID = "partition-id"
LOSS = "loss"


@dataclass(frozen=True)
class TrainRequest:
    """A decoded ``train`` message: theta^k and what the server asks of the worker."""

    theta: np.ndarray
    iteration: int
    parts: WorkerParts
    batch_size: int
    instruction: Instruction


def train_content(
    theta: ArrayRecord,
    iteration: int,
    compressor: Compressor,
    memory: str,
    rule: str,
    batch_size: int,
    instruction: Instruction,
) -> RecordDict:
    """The ``train`` message of one worker: theta^k (a record shared by all messages of the round) and its instruction."""
    return RecordDict(
        {
            THETA: theta,
            INSTRUCTION: ConfigRecord(
                {
                    ITERATION: iteration,
                    COMPRESSOR: compressor.spec(),
                    MEMORY: memory,
                    RULE: rule,
                    BATCH_SIZE: batch_size,
                    THRESHOLD: float(instruction.threshold),
                    FORCE_UPLOAD: bool(instruction.force_upload),
                    RESET: bool(instruction.reset),
                }
            ),
        }
    )


_NPY_V1_MAGIC = b"\x93NUMPY\x01\x00"


def array_to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` without ``np.load``'s header parsing (a third of a millisecond per call).

    Takes the fast path only for a version-1 ``.npy`` C-order array whose header names exactly the
    array's dtype; anything else goes through ``Array.numpy()``.
    """
    data = array.data
    if array.stype == "numpy.ndarray" and data[:8] == _NPY_V1_MAGIC:
        header_end = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:header_end]
        dtype = np.dtype(array.dtype)
        if b"'fortran_order': False" in header and f"'descr': '{dtype.str}'".encode() in header:
            values = np.frombuffer(data, dtype, offset=header_end)
            if values.size == math.prod(array.shape):
                return values.reshape(array.shape)
    return array.numpy()


@functools.lru_cache(maxsize=32)
def worker_parts(compressor: str, memory: str, rule: str) -> WorkerParts:
    """The parts an instruction names, built and validated once per process."""
    return WorkerParts(compressor_from_spec(compressor), memory_named(memory), rule_named(rule).worker)


def read_train_request(message: Message) -> TrainRequest:
    content = message.content
    config = content.config_records[INSTRUCTION]
    (theta,) = [array_to_numpy(array) for array in content.array_records[THETA].values()]
    theta = theta.astype(theta.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only
    return TrainRequest(
        theta=theta,
        iteration=int(config[ITERATION]),
        parts=worker_parts(str(config[COMPRESSOR]), str(config[MEMORY]), str(config[RULE])),
        batch_size=int(config[BATCH_SIZE]),
        instruction=Instruction(
            threshold=float(config[THRESHOLD]),
            force_upload=bool(config[FORCE_UPLOAD]),
            reset=bool(config[RESET]),
        ),
    )


def reply_content(partition_id: int, loss: float, payload: bytes | None) -> RecordDict:
    """A skip is the MetricRecord alone; an upload adds the payload bytes."""
    records: dict = {METRICS: MetricRecord({PARTITION_ID: partition_id, LOSS: float(loss)})}
    if payload is not None:
        records[UPLOAD] = ConfigRecord({PAYLOAD: payload})
    return RecordDict(records)


@dataclass(frozen=True)
class TrainReply:
    partition_id: int
    loss: float
    payload: bytes | None


def read_train_reply(message: Message) -> TrainReply:
    """Decode a worker's reply; raises :class:`PayloadError` when its records are not what the protocol says."""
    content = message.content
    metrics = content.metric_records.get(METRICS)
    if metrics is None:
        raise PayloadError(f"reply has no '{METRICS}' MetricRecord")
    try:
        partition_id = int(metrics[PARTITION_ID])
        loss = float(metrics[LOSS])
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"reply metrics need '{PARTITION_ID}' and '{LOSS}': {exc}") from exc
    if not math.isfinite(loss):
        raise PayloadError(f"reply reports a non-finite loss {loss}")
    payload = None
    upload = content.config_records.get(UPLOAD)
    if upload is not None:
        payload = upload.get(PAYLOAD)
        if not isinstance(payload, bytes):
            raise PayloadError(f"'{UPLOAD}' must carry bytes under '{PAYLOAD}', got {type(payload).__name__}")
    return TrainReply(partition_id=partition_id, loss=loss, payload=payload)
