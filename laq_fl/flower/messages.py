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
                     (compressed innovations from version ``theta-base``, oldest first; -1 and [] with a full theta);
                     ``version`` (the worker's upload count as the server knows it; ignored with ``reset``) and,
                     with a restore, ``restore-version`` and ``restore-error-sq``
    ``restore``      ArrayRecord, only when the server restores the worker's state (:class:`~laq_fl.protocol.Restore`):
                     ``copy`` (``Q_hat``) and, for rules that keep it, ``theta-hat``

Worker -> server (reply):
    a skip           nothing: an empty RecordDict, as cheap as Flower's own empty reply
    ``reply``        ConfigRecord, on an upload, when ``report`` is set, or when the worker's state differs from the
                     server's: ``partition-id``, ``version`` (its upload count after this round), ``checksum`` (CRC-32
                     of its ``Q_hat`` and theta_tilde, :meth:`~laq_fl.worker.WorkerState.checksum`), ``loss`` (f_m at
                     the iterate it received; absent when it did not compute) and, on an upload, ``payload`` (the
                     compressor's bytes) and ``error-sq`` (its ``||eps_hat||^2``, which a restore gives back)

Server -> worker (``query`` message, once per node id the server has not seen): ``identify``, an empty ConfigRecord.
Worker -> server: ``identity`` ConfigRecord: ``partition-id``, ``version`` and, when it holds a state,
``checksum``; or ``config-error`` (its node config does not fit the run) and nothing else.

A worker told to upload (``force-upload``) must upload: the server rejects a skip reply to such an
instruction as malformed, keeps the stale copy and resyncs that worker in the next round. A worker whose version
is not the instruction's (it restarted with an empty state, or holds another run's) does not compute: it replies
with its ``partition-id``, ``version`` and ``checksum`` only, and the server restores its state next round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from laq_fl.compressors import Compressor, compressor_from_spec
from laq_fl.downlink import NO_VERSION, Broadcast
from laq_fl.errors import NodeConfigError, PayloadError
from laq_fl.memory import memory_named
from laq_fl.protocol import NodeIdentity, Restore, TrainReply
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
VERSION = "version"
ERROR_SQ = "error-sq"
RESTORE = "restore"
RESTORE_VERSION = "restore-version"
RESTORE_ERROR_SQ = "restore-error-sq"
RESTORE_COPY = "copy"
"""The restore's ``Q_hat``; its other arrays are the parts' held arrays under their own names (``theta-hat``)."""
IDENTIFY = "identify"
IDENTITY = "identity"
CONFIG_ERROR = "config-error"


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
    version: int = 0
    restore: Restore | None = None


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
    version: int = 0,
    restore: Restore | None = None,
) -> RecordDict:
    """The ``train`` message of one worker: ``full_theta`` (a record shared by all messages of the round that send
    the full iterate; ``None`` when ``broadcast`` carries innovations), its instruction, the worker's ``version``
    as the server counts it and, when the server restores the worker's state, ``restore``."""
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
        VERSION: int(version),
    }
    if downlink is not None:
        config[DOWNLINK] = downlink.spec()
        config[THETA_VERSION] = broadcast.version
        config[THETA_BASE] = broadcast.base
        config[THETA_INNOVATIONS] = list(broadcast.innovations)
    records: dict = {INSTRUCTION: ConfigRecord(config)}
    if restore is not None:
        config[RESTORE_VERSION] = int(restore.version)
        config[RESTORE_ERROR_SQ] = float(restore.error_sq)
        arrays = {RESTORE_COPY: Array(np.ascontiguousarray(restore.copy))}
        arrays.update({name: Array(np.ascontiguousarray(value)) for name, value in restore.held.items()})
        records[RESTORE] = ArrayRecord(arrays)
        records[INSTRUCTION] = ConfigRecord(config)
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
    return read_train_content(message.content)


def read_train_content(content: RecordDict) -> TrainRequest:
    """Decode the content of a ``train`` message (:func:`train_content`'s inverse)."""
    config = content.config_records[INSTRUCTION]
    theta = None
    if THETA in content.array_records:
        (theta,) = [array_to_numpy(array) for array in content.array_records[THETA].values()]
        theta = _native(theta)
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
    restore = None
    if RESTORE in content.array_records:
        arrays = content.array_records[RESTORE]
        native = {key: _native(array_to_numpy(array)) for key, array in arrays.items()}
        restore = Restore(
            copy=native.pop(RESTORE_COPY),
            version=int(config[RESTORE_VERSION]),
            error_sq=float(config[RESTORE_ERROR_SQ]),
            held=native,
        )
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
        version=int(config.get(VERSION, 0)),
        restore=restore,
    )


def _native(values: np.ndarray) -> np.ndarray:
    return values.astype(values.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only


def reply_content(
    partition_id: int,
    loss: float | None,
    payload: bytes | None,
    checksum: int,
    report: bool = False,
    version: int = 0,
    error_sq: float | None = None,
) -> RecordDict:
    """A skip without ``report`` is an empty RecordDict; otherwise one ConfigRecord (``payload`` and ``error-sq``
    only on an upload, ``loss`` only when the worker computed). ``loss=None`` with no payload is the reply of a
    worker whose state differs from the server's; it is always sent."""
    if payload is None and not report and loss is not None:
        return RecordDict()
    record: dict = {PARTITION_ID: partition_id, VERSION: int(version), CHECKSUM: checksum}
    if loss is not None:
        record[LOSS] = float(loss)
    if payload is not None:
        record[PAYLOAD] = payload
        record[ERROR_SQ] = float(0.0 if error_sq is None else error_sq)
    return RecordDict({REPLY: ConfigRecord(record)})


def _integer(record: ConfigRecord, key: str, low: int, high: int) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise PayloadError(f"'{key}' must be an integer in [{low}, {high}), got {value!r}")
    return value


def _finite(record: ConfigRecord, key: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"'{key}' must be a finite number, got {value!r}")
    return float(value)


def read_train_reply(message: Message) -> TrainReply:
    """Decode a worker's reply (:class:`~laq_fl.protocol.TrainReply`); raises :class:`PayloadError` when its records
    are not what the protocol says. Whether the reply is acceptable is :func:`laq_fl.protocol.judge`'s question."""
    content = message.content
    if not content.config_records and not content.array_records and not content.metric_records:
        return TrainReply()  # a bare skip
    record = content.config_records.get(REPLY)
    if record is None or len(content) != 1:
        raise PayloadError(f"a reply is empty or holds exactly one ConfigRecord '{REPLY}', got {sorted(content)}")
    allowed = {PARTITION_ID, VERSION, CHECKSUM, LOSS, PAYLOAD, ERROR_SQ}
    if set(record) - allowed:
        raise PayloadError(f"unknown key(s) in the reply: {sorted(set(record) - allowed)}")
    try:
        partition_id = _integer(record, PARTITION_ID, 0, 2**31)
        version = _integer(record, VERSION, 0, 2**62)
        checksum = _integer(record, CHECKSUM, 0, 2**32)
        loss = _finite(record, LOSS) if LOSS in record else None
        payload = record.get(PAYLOAD)
        error_sq = _finite(record, ERROR_SQ) if ERROR_SQ in record else None
    except KeyError as exc:
        raise PayloadError(f"a reply needs '{PARTITION_ID}', '{VERSION}' and '{CHECKSUM}': missing {exc}") from None
    if payload is not None and not isinstance(payload, bytes):
        raise PayloadError(f"'{PAYLOAD}' must be bytes, got {type(payload).__name__}")
    if (payload is None) != (error_sq is None):
        raise PayloadError(f"'{ERROR_SQ}' comes with a payload and only with one")
    if payload is not None and (loss is None or error_sq < 0):
        raise PayloadError(f"an upload needs its '{LOSS}' and a '{ERROR_SQ}' >= 0")
    return TrainReply(partition_id=partition_id, loss=loss, payload=payload, checksum=checksum, version=version,
                      error_sq=error_sq)


def identify_content() -> RecordDict:
    """The ``query`` message that asks a node which partition it serves and what state it holds."""
    return RecordDict({IDENTIFY: ConfigRecord({})})


def identity_content(identity: NodeIdentity | None = None, config_error: str | None = None) -> RecordDict:
    """A node's answer: its :class:`~laq_fl.protocol.NodeIdentity`, or the error its node config raised."""
    if config_error is not None:
        return RecordDict({IDENTITY: ConfigRecord({CONFIG_ERROR: config_error})})
    assert identity is not None
    record: dict = {PARTITION_ID: identity.partition, VERSION: identity.version}
    if identity.checksum is not None:
        record[CHECKSUM] = identity.checksum
    return RecordDict({IDENTITY: ConfigRecord(record)})


def read_identity(message: Message) -> NodeIdentity:
    """Decode a node's answer to ``identify``. Raises :class:`NodeConfigError` with the node's own message when it
    reported one, and :class:`PayloadError` for anything else that is not an identity."""
    content = message.content
    record = content.config_records.get(IDENTITY)
    if record is None or len(content) != 1:
        raise PayloadError(f"an identity is exactly one ConfigRecord '{IDENTITY}', got {sorted(content)}")
    if CONFIG_ERROR in record:
        raise NodeConfigError(str(record[CONFIG_ERROR]))
    try:
        partition = _integer(record, PARTITION_ID, 0, 2**31)
        version = _integer(record, VERSION, 0, 2**62)
        checksum = _integer(record, CHECKSUM, 0, 2**32) if CHECKSUM in record else None
    except KeyError as exc:
        raise PayloadError(f"an identity needs '{PARTITION_ID}' and '{VERSION}': missing {exc}") from None
    return NodeIdentity(partition=partition, version=version, checksum=checksum)
