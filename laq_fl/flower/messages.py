"""What travels in the LAQ protocol and how it maps to Flower records (kebab-case keys, named once).

Server -> worker (``train`` message):
    ``theta``        ArrayRecord with theta^k as one float array
    ``instruction``  ConfigRecord: ``iteration`` (k, from 0), ``compressor`` (none, laq, qsgd, sparsify),
                     ``bits``, ``density`` (sparsify), ``batch-size`` (0: full gradient),
                     ``rule`` (none, laq or same-sample), ``threshold`` (the shared part of 7a),
                     ``force-upload`` (7b), ``reset`` (resync)

Worker -> server (reply):
    ``metrics``      MetricRecord: ``partition-id``, ``loss`` (f_m at theta^k); kept minimal, it is most of a skip
    ``upload``       ConfigRecord with ``payload`` (bytes: float32 R + packed levels for LAQ); absent for a skip
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from laq_fl.codec import PayloadError
from laq_fl.compressors import Compressor
from laq_fl.worker import Instruction

THETA = "theta"
INSTRUCTION = "instruction"
METRICS = "metrics"
UPLOAD = "upload"
PAYLOAD = "payload"
ITERATION = "iteration"
COMPRESSOR = "compressor"
BITS = "bits"
DENSITY = "density"
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
    compressor: Compressor
    batch_size: int
    rule: str
    instruction: Instruction


def train_content(
    theta: ArrayRecord, iteration: int, compressor: Compressor, batch_size: int, rule: str, instruction: Instruction
) -> RecordDict:
    return RecordDict(
        {
            THETA: theta,
            INSTRUCTION: ConfigRecord(
                {
                    ITERATION: iteration,
                    COMPRESSOR: compressor.scheme,
                    BITS: compressor.bits,
                    DENSITY: float(compressor.density),
                    BATCH_SIZE: batch_size,
                    RULE: rule,
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


def read_train_request(message: Message) -> TrainRequest:
    content = message.content
    config = content.config_records[INSTRUCTION]
    (theta,) = [array_to_numpy(array) for array in content.array_records[THETA].values()]
    return TrainRequest(
        theta=theta,
        iteration=int(config[ITERATION]),
        compressor=Compressor(str(config[COMPRESSOR]), int(config[BITS]), float(config[DENSITY])),
        batch_size=int(config[BATCH_SIZE]),
        rule=str(config[RULE]),
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
