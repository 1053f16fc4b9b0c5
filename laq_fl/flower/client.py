"""The worker as a Flower ``train`` handler: gradient at theta^k, compress, rule, reply.

The worker's :class:`~laq_fl.worker.WorkerState` (``Q_hat`` and theta_hat in the run's dtype, the residual
and ``||eps_hat||^2`` in float64, the version as int64) lives in ``context.state`` as a ConfigRecord of raw
little-endian bytes, read without the ``.npy`` header parsing an ArrayRecord would cost every round, and
rewritten only when it changes. Data and the objective are loaded once per process.
"""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from laq_fl.compressors import compression_rng
from laq_fl.config import ProblemConfig
from laq_fl.data import minibatch_indices
from laq_fl.flower.messages import NodeConfigError, identity_content, read_train_content, reply_content
from laq_fl.membership import Identity
from laq_fl.models import LocalObjective
from laq_fl.problem import local_objective
from laq_fl.run_config import RunSettings, parse_run_config
from laq_fl.worker import (
    COPY_KEY,
    LAST_ERROR_SQ_KEY,
    RESIDUAL_KEY,
    THETA_HAT_KEY,
    THETA_TILDE_KEY,
    THETA_VERSION_KEY,
    VERSION_KEY,
    WorkerState,
    local_round,
)

MEMORY_RECORD = "laq-worker"


@functools.lru_cache(maxsize=8)
def _settings(run_config_items: tuple) -> RunSettings:
    return parse_run_config(dict(run_config_items))


def settings_of(context: Context) -> RunSettings:
    """The run config parsed once per process (contexts of one run share it)."""
    return _settings(tuple(sorted(context.run_config.items())))


@functools.lru_cache(maxsize=None)
def cached_objective(problem: ProblemConfig, partition_id: int) -> LocalObjective:
    return local_objective(problem, partition_id)


def partition_of(context: Context, num_workers: int) -> int:
    """This node's worker index m, from ``--node-config`` (``partition-id``, ``num-partitions``)."""
    try:
        raw = context.node_config["partition-id"], context.node_config["num-partitions"]
        if any(isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) for value in raw):
            raise ValueError(f"got {raw[0]!r} and {raw[1]!r}")
        partition_id, num_partitions = int(raw[0]), int(raw[1])
    except KeyError as exc:
        raise NodeConfigError(
            "a LAQ worker needs node config 'partition-id' and 'num-partitions' "
            '(simulation sets them; a SuperNode takes --node-config "partition-id=0 num-partitions=10")'
        ) from exc
    except ValueError as exc:
        raise NodeConfigError(f"node config partition-id and num-partitions must be integers: {exc}") from None
    if num_partitions != num_workers or not 0 <= partition_id < num_workers:
        raise NodeConfigError(
            f"node config partition-id={partition_id} num-partitions={num_partitions} does not fit "
            f"num-clients={num_workers} of the run config"
        )
    return partition_id


def _stored_dtypes(dtype: np.dtype) -> dict[str, np.dtype]:
    dtype = np.dtype(dtype).newbyteorder("<")
    float64, int64 = np.dtype("<f8"), np.dtype("<i8")
    return {
        COPY_KEY: dtype, THETA_HAT_KEY: dtype, THETA_TILDE_KEY: dtype, RESIDUAL_KEY: float64,
        LAST_ERROR_SQ_KEY: float64, VERSION_KEY: int64, THETA_VERSION_KEY: int64,
    }


def load_state(context: Context, size: int, dtype: np.dtype | type) -> WorkerState:
    """This node's state from ``context.state``, or the zero state before its first upload."""
    state = stored_state(context, dtype)
    if state is None:
        return WorkerState.zeros(size, dtype)
    if state.copy.size != size:
        raise ValueError(f"context.state holds a Q_hat of {state.copy.size} values; the model has {size}")
    return state


def stored_state(context: Context, dtype: np.dtype | type) -> WorkerState | None:
    """The state kept in ``context.state``, or ``None`` when this node holds none (no upload yet, or restarted)."""
    record = context.state.config_records.get(MEMORY_RECORD)
    if record is None:
        return None
    dtypes = _stored_dtypes(dtype)
    # Read-only views of the stored bytes: the state replaces its vectors, it never edits them.
    arrays = {key: np.frombuffer(blob, dtypes[key]) for key, blob in record.items()}
    for key in (LAST_ERROR_SQ_KEY, VERSION_KEY, THETA_VERSION_KEY):
        if key in arrays:
            arrays[key] = arrays[key].reshape(())
    return WorkerState.from_arrays(arrays)


def store_state(context: Context, state: WorkerState) -> None:
    arrays = state.to_arrays()  # numpy on the CPU, wherever the worker computed
    dtypes = _stored_dtypes(arrays[COPY_KEY].dtype)
    context.state[MEMORY_RECORD] = ConfigRecord(
        {key: np.asarray(value, dtypes[key]).tobytes() for key, value in arrays.items()}
    )


def handle_train(message: Message, context: Context) -> Message:
    """Steps 6-13 of Algorithm 2 on this node; replies with the compressor's payload or an empty skip.

    A two-way broadcast that does not apply to the theta_tilde this node holds (it restarted, or missed one)
    raises :class:`~laq_fl.downlink.StaleIterateError`: the server gets an error reply and resends in full.
    """
    return Message(train_reply_content(message.content, context), reply_to=message)


def train_reply_content(content: RecordDict, context: Context) -> RecordDict:
    """:func:`handle_train` on a message's content: the reply's content (updates ``context.state``)."""
    settings = settings_of(context)
    problem = settings.problem
    partition_id = partition_of(context, problem.num_workers)
    objective = cached_objective(problem, partition_id)
    request = read_train_content(content)

    batch = None
    if request.batch_size > 0:
        batch = minibatch_indices(objective.num_samples, request.batch_size, problem.seed, partition_id, request.iteration)
    state = load_state(context, objective.model.size, np.dtype(settings.problem.dtype))
    restored = request.restore is not None
    if restored:
        state.restore(request.restore.copy, request.restore.version, request.restore.error_sq, request.restore.theta_hat)
    if not request.instruction.reset and state.version != request.version:
        # This node lost its state (a restart, a new run) or holds another one: computing on it would put a wrong
        # innovation into the aggregate. Say what it holds; the server sends the message again with a restore.
        return reply_content(partition_id, None, None, state.checksum(), version=state.version)
    theta = state.receive(request.broadcast, request.downlink)
    parts = request.parts
    rng = compression_rng(problem.seed, partition_id, request.iteration) if parts.compressor.needs_rng else None
    loss, payload = local_round(state, objective, theta, parts, request.instruction, batch=batch, rng=rng)
    if payload is not None or request.instruction.reset or request.downlink is not None or restored:
        store_state(context, state)
    return reply_content(partition_id, loss, payload, state.checksum(), request.report, state.version,
                         state.last_error_sq)


def handle_identify(message: Message, context: Context) -> Message:
    """Answer the server's ``identify`` query: the partition this node serves and the version and checksum of the
    state it holds, without loading any data; or the error its node config raises (the server stops the run)."""
    return Message(identity_reply_content(context), reply_to=message)


def identity_reply_content(context: Context) -> RecordDict:
    """:func:`handle_identify`'s reply content."""
    settings = settings_of(context)
    try:
        partition_id = partition_of(context, settings.problem.num_workers)
    except NodeConfigError as error:
        return identity_content(config_error=str(error))
    state = stored_state(context, np.dtype(settings.problem.dtype))
    identity = Identity(partition_id) if state is None else Identity(partition_id, state.version, state.checksum())
    return identity_content(identity)
