"""The worker as a Flower ``train`` handler: gradient at theta^k, compress, rule, reply.

The worker's :class:`~laq_fl.worker.WorkerState` (``Q_hat``, the parts' held arrays, ``||eps_hat||^2``, the
version, ``theta_tilde``) lives in ``context.state`` as a ConfigRecord of raw little-endian bytes, one entry per
array of :meth:`~laq_fl.worker.WorkerState.to_arrays`, with a ``layout`` entry naming each one's dtype: read without
the ``.npy`` header parsing an ArrayRecord would cost every round, and rewritten only when it changes. A stored state
that cannot be read back (bytes that do not fit its layout or the model) is treated as lost: the worker holds no
state, says so, and the server restores it. Data and the objective are loaded once per process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log

from laq_fl.compressors import compression_rng
from laq_fl.config import ProblemConfig
from laq_fl.data import minibatch_indices
from laq_fl.errors import NodeConfigError
from laq_fl.flower.messages import identity_content, read_train_content, reply_content
from laq_fl.models import LocalObjective
from laq_fl.part_state import StateArray
from laq_fl.problem import local_objective
from laq_fl.protocol import NodeIdentity
from laq_fl.run_config import RunSettings, parse_run_config
from laq_fl.worker import COPY_KEY, SCALAR_KEYS, WorkerState, local_round

MEMORY_RECORD = "laq-worker"
LAYOUT_KEY = "layout"
"""The entry of :data:`MEMORY_RECORD` that maps every other entry to its little-endian numpy dtype (JSON)."""


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


def load_state(context: Context, size: int, dtype: np.dtype | type, arrays: Sequence[StateArray] = ()) -> WorkerState:
    """This node's state from ``context.state``, or the zero state before its first upload (or when the stored one
    cannot be read back, holds a model of another size, or part arrays other than the ``arrays`` its parts declare,
    in their dtypes: then a warning says so, and the server restores it)."""
    state = stored_state(context, dtype)
    if state is None:
        return WorkerState.zeros(size, dtype)
    declared = {array.name: array.numpy_dtype(dtype) for array in arrays}
    misfit = None
    if state.copy.size != size:
        misfit = f"a Q_hat of {state.copy.size} values, the model has {size}"
    elif arrays and any(name not in declared or value.dtype != declared[name] for name, value in state.held.items()):
        misfit = (f"part arrays {[(name, str(value.dtype)) for name, value in state.held.items()]}, the parts declare "
                  f"{[(name, str(kind)) for name, kind in declared.items()]}")
    if misfit is not None:
        log(WARNING, "context.state holds %s: treated as lost (the server restores it)", misfit)
        return WorkerState.zeros(size, dtype)
    return state


def stored_state(context: Context, dtype: np.dtype | type) -> WorkerState | None:
    """The state kept in ``context.state``, or ``None`` when this node holds none (no upload yet, restarted, or a
    stored state that cannot be read back, which a warning names). ``dtype``: the run's, which ``Q_hat`` must have."""
    record = context.state.config_records.get(MEMORY_RECORD)
    if record is None:
        return None
    try:
        return _read_state(record, np.dtype(dtype))
    except (KeyError, TypeError, ValueError) as error:
        log(WARNING, "context.state holds a worker state that cannot be read back (%s: %s): treated as lost, the "
            "server restores it", type(error).__name__, error)
        return None


def _read_state(record: ConfigRecord, dtype: np.dtype) -> WorkerState:
    layout = json.loads(record[LAYOUT_KEY])
    if not isinstance(layout, dict) or set(layout) != set(record) - {LAYOUT_KEY}:
        raise ValueError(f"the layout names {sorted(layout) if isinstance(layout, dict) else layout!r}, the record holds "
                         f"{sorted(set(record) - {LAYOUT_KEY})}")
    if np.dtype(layout[COPY_KEY]) != dtype.newbyteorder("<"):
        raise ValueError(f"Q_hat is stored as {layout[COPY_KEY]}, the run computes in {dtype}")
    arrays = {}
    for key, name in layout.items():
        blob, stored = record[key], np.dtype(name)
        if not isinstance(blob, bytes) or stored.kind not in "fi" or len(blob) % stored.itemsize:
            raise ValueError(f"{key!r} is not a whole number of {stored} values")
        # Read-only views of the stored bytes: the state replaces its vectors, it never edits them.
        values = np.frombuffer(blob, stored)
        if key in SCALAR_KEYS:
            if values.size != 1:
                raise ValueError(f"{key!r} holds {values.size} values, not one")
            values = values.reshape(())
        if stored.kind == "f" and not np.isfinite(values).all():  # the server never holds a non-finite copy
            raise ValueError(f"{key!r} holds NaN or inf")
        arrays[key] = values
    state = WorkerState.from_arrays(arrays)
    if state.version < 0 or state.last_error_sq < 0:
        raise ValueError(f"last-error-sq {state.last_error_sq} or version {state.version} is not a state's")
    return state


def store_state(context: Context, state: WorkerState) -> None:
    arrays = state.to_arrays()  # numpy on the CPU, wherever the worker computed
    little = {key: np.asarray(value, np.asarray(value).dtype.newbyteorder("<")) for key, value in arrays.items()}
    record: dict = {key: value.tobytes() for key, value in little.items()}
    record[LAYOUT_KEY] = json.dumps({key: value.dtype.str for key, value in little.items()})
    context.state[MEMORY_RECORD] = ConfigRecord(record)


def handle_train(message: Message, context: Context) -> Message:
    """Steps 6-13 of Algorithm 2 on this node; replies with the compressor's payload or an empty skip.

    A two-way broadcast that does not apply to the theta_tilde this node holds (it restarted, or missed one)
    raises :class:`~laq_fl.errors.StaleIterateError`: the server gets an error reply and resends in full.
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
    state = load_state(context, objective.model.size, np.dtype(settings.problem.dtype), request.parts.state_arrays)
    restored = request.restore is not None
    if restored:
        state.restore(request.restore.copy, request.restore.version, request.restore.error_sq, request.restore.held)
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
    identity = NodeIdentity(partition_id) if state is None else NodeIdentity(partition_id, state.version, state.checksum())
    return identity_content(identity)
