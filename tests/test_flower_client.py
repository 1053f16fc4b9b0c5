"""The ClientApp's train handler: memory in context.state, compact replies, bytes on the wire."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from laq_fl.config import AlgorithmConfig
from laq_fl.downlink import NO_VERSION, Broadcast
from laq_fl.flower.client import LAYOUT_KEY, MEMORY_RECORD, handle_train, load_state
from laq_fl.flower.messages import array_to_numpy, read_train_reply, train_content
from laq_fl.flower.wire import downlink_bytes, uplink_bytes
from laq_fl.models import FlatModel
from laq_fl.skip_rules import Instruction

RUN_CONFIG = {"dataset": "synthetic", "num-clients": 3, "bits": 4, "data-dir": "/nonexistent-data-dir"}


def make_context(partition: int = 1) -> Context:
    return Context(
        run_id=1, node_id=77, node_config={"partition-id": partition, "num-partitions": 3}, state=RecordDict(),
        run_config=dict(RUN_CONFIG),
    )


def train_message(
    theta: np.ndarray, iteration: int, instruction: Instruction, bits: int = 4, algorithm: str = "laq", report: bool = False,
    version: int = 0,
) -> Message:
    """``version``: the worker's upload count as the server knows it."""
    config = AlgorithmConfig(algorithm=algorithm, bits=bits)
    broadcast = Broadcast(version=NO_VERSION, theta=theta)
    content = train_content(ArrayRecord([theta]), broadcast, None, iteration, config.compressor(), config.memory.name,
                            config.spec.rule, 0, instruction, report, version)
    message = Message(content, 77, MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return message


@pytest.fixture
def theta() -> np.ndarray:
    return FlatModel.named("logistic").initial_parameters("glorot", seed=0)


def test_state_persists_and_skip_reply_has_no_arrays(task_identity, theta: np.ndarray) -> None:
    context = make_context()
    first = handle_train(train_message(theta, 0, Instruction(0.0, force_upload=True)), context)
    parsed = read_train_reply(first)
    assert parsed.partition_id == 1 and parsed.payload is not None
    assert len(parsed.payload) == 4 + (4 * theta.size + 7) // 8
    q_hat = load_state(context, theta.size, np.float32).copy
    assert q_hat.dtype == np.float32 and q_hat.shape == theta.shape and np.any(q_hat)
    stored = context.state.config_records[MEMORY_RECORD]
    # One float32 copy of Q_hat, two scalars, and the layout naming their dtypes.
    assert sum(len(value) for key, value in stored.items() if key != LAYOUT_KEY) == 4 * theta.size + 16
    assert len(stored[LAYOUT_KEY]) < 100
    assert load_state(context, theta.size, np.float32).version == 1

    # Same theta, generous threshold: the innovation is tiny, so the worker skips and keeps its memory.
    second = handle_train(train_message(theta, 1, Instruction(1e9, force_upload=False), version=1), context)
    assert read_train_reply(second).payload is None
    assert len(second.content) == 0  # a bare skip
    np.testing.assert_array_equal(load_state(context, theta.size, np.float32).copy, q_hat)


def test_a_skip_costs_no_more_than_an_empty_reply(task_identity, theta: np.ndarray) -> None:
    # Realistic 63-bit ids: they are varints on the wire.
    task_identity.run_id, task_identity.task_id = (1 << 63) - 12345, (1 << 63) - 999
    context = make_context()
    context.node_id = (1 << 63) - 77
    handle_train(train_message(theta, 0, Instruction(0.0, force_upload=True)), context)
    request = train_message(theta, 2500, Instruction(1e9, force_upload=False), version=1)
    skip = handle_train(request, context)
    assert read_train_reply(skip).payload is None
    empty = Message(RecordDict({}), reply_to=request)  # Flower's floor for any reply
    for message in (empty, skip):
        message.metadata.__dict__["_message_id"] = "f" * 64  # ids are SHA-256 hex digests in a runtime
    assert uplink_bytes(skip) <= 1.1 * uplink_bytes(empty)
    # In a report round the skip carries loss and checksum in one record (~340 bytes, mostly content-addressed ids).
    reported = handle_train(train_message(theta, 2501, Instruction(1e9, force_upload=False), report=True, version=1), context)
    reported.metadata.__dict__["_message_id"] = "f" * 64
    parsed = read_train_reply(reported)
    assert parsed.payload is None and parsed.partition_id == 1 and parsed.checksum == load_state(context, theta.size, np.float32).checksum()
    assert uplink_bytes(reported) - uplink_bytes(empty) < 400


def test_reset_restarts_from_zero(task_identity, theta: np.ndarray) -> None:
    context = make_context()
    handle_train(train_message(theta, 0, Instruction(0.0, force_upload=True)), context)
    reply = handle_train(train_message(theta, 1, Instruction(0.0, force_upload=True, reset=True)), context)
    fresh = handle_train(train_message(theta, 0, Instruction(0.0, force_upload=True)), make_context())
    assert read_train_reply(reply).payload == read_train_reply(fresh).payload  # innovation taken against zero


@pytest.mark.parametrize(("bits", "model"), [(4, "logistic"), (8, "logistic"), (32, "logistic"), (8, "mlp")])
def test_uplink_bytes_are_payload_plus_bounded_envelope(task_identity, bits: int, model: str) -> None:
    context = make_context()
    context.run_config = {**RUN_CONFIG, "model": model, "bits": bits}
    theta = FlatModel.named(model).initial_parameters("glorot", seed=0)
    reply = handle_train(train_message(theta, 0, Instruction(0.0, force_upload=True), bits), context)
    measured = uplink_bytes(reply)
    payload = len(read_train_reply(reply).payload)
    assert payload == (4 * theta.size if bits == 32 else 4 + (bits * theta.size + 7) // 8)
    assert payload < measured < payload + 2048  # envelope: ids, record headers, object tree
    assert downlink_bytes(train_message(theta, 0, Instruction(0.0, True), bits)) > 4 * theta.size


def test_error_feedback_state_persists_in_context(task_identity, theta: np.ndarray) -> None:
    context = make_context()
    context.run_config = {**RUN_CONFIG, "algorithm": "ef-signsgd"}
    for k in range(2):
        handle_train(train_message(theta, k, Instruction(0.0, force_upload=True), algorithm="ef-signsgd", version=k), context)
    state = load_state(context, theta.size, np.float32)
    residual = state.held["residual"]
    assert state.version == 2 and residual.dtype == np.float64 and np.any(residual)


def test_a_nan_gradient_is_refused_with_an_error_that_names_it(task_identity, theta: np.ndarray) -> None:
    context = make_context()
    poisoned = theta.copy()
    poisoned[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        handle_train(train_message(poisoned, 0, Instruction(0.0, force_upload=True)), context)
    assert MEMORY_RECORD not in context.state.config_records  # nothing stored


def test_partition_outside_run_config_is_an_error(task_identity, theta: np.ndarray) -> None:
    context = make_context()
    context.node_config = {"partition-id": 5, "num-partitions": 6}
    with pytest.raises(ValueError, match="num-clients=3"):
        handle_train(train_message(theta, 0, Instruction(0.0, True)), context)


@pytest.mark.parametrize(
    "array",
    [np.arange(7, dtype=np.float32), np.ones((3, 4), np.float64), np.asfortranarray(np.ones((3, 4))), np.arange(5, dtype=">f4"),
     np.zeros(0, np.float32), np.array(2.5)],
)
def test_fast_array_reader_equals_flower_numpy(array: np.ndarray) -> None:
    record = Array(array)
    fast = array_to_numpy(record)
    expected = record.numpy()
    assert fast.dtype == expected.dtype and fast.shape == expected.shape
    np.testing.assert_array_equal(fast, expected)
    # The fast path (a read-only view of the bytes) serves C-order arrays; Fortran order falls back to np.load.
    assert fast.flags.writeable == (not array.flags.c_contiguous)


def test_stored_part_arrays_must_be_the_ones_the_parts_declare(task_identity, theta: np.ndarray, caplog) -> None:
    """An error-feedback residual stored as float32 (its memory declares float64), or an array no part declares, is a
    state that cannot be read back: the worker holds none, and says so."""
    from laq_fl.memory import ErrorFeedback
    from laq_fl.worker import WorkerState
    from laq_fl.flower.client import store_state

    declared = ErrorFeedback.state_arrays
    for held in ({"residual": np.ones(theta.size, np.float32)}, {"momentum": np.ones(theta.size)}):
        context = make_context()
        store_state(context, WorkerState(copy=np.ones(theta.size, np.float32), version=4, held=held))
        assert load_state(context, theta.size, np.float32, declared).version == 0
    assert caplog.text.count("treated as lost") == 2
    context = make_context()
    store_state(context, WorkerState(copy=np.ones(theta.size, np.float32), version=4,
                                     held={"residual": np.ones(theta.size)}))
    assert load_state(context, theta.size, np.float32, declared).version == 4
