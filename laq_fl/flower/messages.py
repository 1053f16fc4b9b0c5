"""What travels in the LAQ protocol and how it maps to Flower records (kebab-case keys, named once).

Server -> worker (``train`` message):
    ``theta``        ArrayRecord with the full iterate as one float array (theta^k, or theta_tilde to a two-way
                     worker the server does not know to be current); absent when innovations carry it
    ``instruction``  ConfigRecord: ``iteration`` (k, from 0), ``compressor`` (its spec, e.g. ``"grid bits=4"``),
                     ``memory`` and ``rule`` (registry names), ``batch-size`` (0: full gradient),
                     ``threshold`` (the shared part of the rule), ``force-upload`` (7b, first upload),
                     ``reset`` (restart from ``Q_hat = 0``), ``report`` (reply with loss and checksum even on a
                     skip); two-way only: ``downlink`` (the downlink compressor's spec), ``theta-version`` (the
                     version of theta_tilde the worker holds afterwards), ``theta-base`` and ``theta-innovations``
                     (compressed innovations from version ``theta-base``, oldest first; -1 and [] with a full theta)

Worker -> server (reply):
    a skip           nothing: an empty RecordDict, as cheap as Flower's own empty reply
    ``reply``        ConfigRecord, on an upload or when ``report`` is set: ``partition-id``, ``loss``
                     (f_m at the iterate it received), ``checksum`` (CRC-32 of its ``Q_hat`` and theta_tilde,
                     :meth:`~laq_fl.worker.WorkerState.checksum`) and, on an upload, ``payload`` (the compressor's
                     bytes)

A worker told to upload (``force-upload``) must upload: the server rejects a skip reply to such an
instruction as malformed, keeps the stale copy and resyncs that worker in the next round. The server learns
which partition a node serves from its first reply, which is always a (forced) upload.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from laq_fl.codec import PayloadError
from laq_fl.compressors import Compressor, compressor_from_spec
from laq_fl.downlink import NO_VERSION, Broadcast
from laq_fl.memory import memory_named
from laq_fl.skip_rules import Instruction, rule_named
from laq_fl.worker import WorkerParts

THETA = "theta"
INSTRUCTION = "instruction"
REPLY = "reply"
PAYLOAD = "payload"
CHECKSUM = "checksum"
REPORT = "report"
DOWNLINK = "downlink"
THETA_VERSION = "theta-version"
THETA_BASE = "theta-base"
THETA_INNOVATIONS = "theta-innovations"
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
    """A decoded ``train`` message: the broadcast and what the server asks of the worker."""

    broadcast: Broadcast
    downlink: Compressor | None
    iteration: int
    parts: WorkerParts
    batch_size: int
    instruction: Instruction
    report: bool = False


def train_content(
    full_theta: ArrayRecord | None,
    broadcast: Broadcast,
    downlink: Compressor | None,
    iteration: int,
    compressor: Compressor,
    memory: str,
    rule: str,
    batch_size: int,
    instruction: Instruction,
    report: bool = False,
) -> RecordDict:
    """The ``train`` message of one worker: ``full_theta`` (a record shared by all messages of the round that send
    the full iterate; ``None`` when ``broadcast`` carries innovations) and its instruction."""
    config = {
        ITERATION: iteration,
        COMPRESSOR: compressor.spec(),
        MEMORY: memory,
        RULE: rule,
        BATCH_SIZE: batch_size,
        THRESHOLD: float(instruction.threshold),
        FORCE_UPLOAD: bool(instruction.force_upload),
        RESET: bool(instruction.reset),
        REPORT: bool(report),
    }
    if downlink is not None:
        config[DOWNLINK] = downlink.spec()
        config[THETA_VERSION] = broadcast.version
        config[THETA_BASE] = broadcast.base
        config[THETA_INNOVATIONS] = list(broadcast.innovations)
    records: dict = {INSTRUCTION: ConfigRecord(config)}
    if broadcast.full:
        if full_theta is None:
            raise ValueError("a broadcast of the full iterate needs its ArrayRecord")
        records[THETA] = full_theta
    return RecordDict(records)


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
    theta = None
    if THETA in content.array_records:
        (theta,) = [array_to_numpy(array) for array in content.array_records[THETA].values()]
        theta = theta.astype(theta.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only
    downlink = None
    if DOWNLINK in config:
        downlink = compressor_from_spec(str(config[DOWNLINK]))
        broadcast = Broadcast(
            version=int(config[THETA_VERSION]),
            theta=theta,
            base=int(config[THETA_BASE]),
            innovations=tuple(config[THETA_INNOVATIONS]),
        )
    else:
        broadcast = Broadcast(version=NO_VERSION, theta=theta)
    return TrainRequest(
        broadcast=broadcast,
        downlink=downlink,
        iteration=int(config[ITERATION]),
        parts=worker_parts(str(config[COMPRESSOR]), str(config[MEMORY]), str(config[RULE])),
        batch_size=int(config[BATCH_SIZE]),
        instruction=Instruction(
            threshold=float(config[THRESHOLD]),
            force_upload=bool(config[FORCE_UPLOAD]),
            reset=bool(config[RESET]),
        ),
        report=bool(config.get(REPORT, False)),
    )


def reply_content(partition_id: int, loss: float, payload: bytes | None, checksum: int, report: bool = False) -> RecordDict:
    """A skip without ``report`` is an empty RecordDict; otherwise one ConfigRecord (payload only on an upload)."""
    if payload is None and not report:
        return RecordDict()
    record: dict = {PARTITION_ID: partition_id, LOSS: float(loss), CHECKSUM: checksum}
    if payload is not None:
        record[PAYLOAD] = payload
    return RecordDict({REPLY: ConfigRecord(record)})


@dataclass(frozen=True)
class TrainReply:
    """A decoded reply; a bare skip has every field ``None``."""

    partition_id: int | None = None
    loss: float | None = None
    payload: bytes | None = None
    checksum: int | None = None


def read_train_reply(message: Message) -> TrainReply:
    """Decode a worker's reply; raises :class:`PayloadError` when its records are not what the protocol says."""
    content = message.content
    if not content.config_records and not content.array_records and not content.metric_records:
        return TrainReply()  # a bare skip
    record = content.config_records.get(REPLY)
    if record is None or len(content) != 1:
        raise PayloadError(f"a reply is empty or holds exactly one ConfigRecord '{REPLY}', got {sorted(content)}")
    try:
        partition_id, loss, checksum = record[PARTITION_ID], record[LOSS], record[CHECKSUM]
    except KeyError as exc:
        raise PayloadError(f"reply needs '{PARTITION_ID}', '{LOSS}' and '{CHECKSUM}': missing {exc}") from None
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise PayloadError(f"'{PARTITION_ID}' must be an integer, got {partition_id!r}")
    if isinstance(checksum, bool) or not isinstance(checksum, int) or not 0 <= checksum < 2**32:
        raise PayloadError(f"'{CHECKSUM}' must be a CRC-32 (an integer in [0, 2^32)), got {checksum!r}")
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise PayloadError(f"'{LOSS}' must be a finite number, got {loss!r}")
    payload = record.get(PAYLOAD)
    if payload is not None and not isinstance(payload, bytes):
        raise PayloadError(f"'{PAYLOAD}' must be bytes, got {type(payload).__name__}")
    return TrainReply(partition_id=partition_id, loss=float(loss), payload=payload, checksum=checksum)
