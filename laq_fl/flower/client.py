"""The worker as a Flower ``train`` handler: gradient at theta^k, quantize, rule, reply.

The worker's memory (``Q_hat`` as raw float32 bytes and ``||eps_hat||^2``) lives in ``context.state``
as a ConfigRecord, read without the ``.npy`` header parsing an ArrayRecord would cost every round, and
rewritten only when it changes. Data and the objective are loaded once per process.
"""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from laq_fl.compressors import compression_rng
from laq_fl.config import ProblemConfig
from laq_fl.data import minibatch_indices
from laq_fl.flower.messages import read_train_request, reply_content
from laq_fl.models import LocalObjective
from laq_fl.problem import local_objective
from laq_fl.run_config import RunSettings, parse_run_config
from laq_fl.worker import LAST_ERROR_SQ_KEY, Q_HAT_KEY, WorkerMemory, local_round

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
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            "a LAQ worker needs node config 'partition-id' and 'num-partitions' "
            '(simulation sets them; a SuperNode takes --node-config "partition-id=0 num-partitions=10")'
        ) from exc
    if num_partitions != num_workers or not 0 <= partition_id < num_workers:
        raise ValueError(
            f"node config partition-id={partition_id} num-partitions={num_partitions} does not fit "
            f"num-clients={num_workers} of the run config"
        )
    return partition_id


def load_memory(context: Context, size: int, dtype: np.dtype | type) -> WorkerMemory:
    """This node's memory from ``context.state``, or the zero memory before its first upload."""
    record = context.state.config_records.get(MEMORY_RECORD)
    if record is None:
        return WorkerMemory.zeros(size, dtype)
    # Read-only views of the stored bytes: the memory replaces its vectors, it never edits them.
    arrays = {key: np.frombuffer(blob, np.float64 if key == LAST_ERROR_SQ_KEY else dtype) for key, blob in record.items()}
    arrays[LAST_ERROR_SQ_KEY] = arrays[LAST_ERROR_SQ_KEY].reshape(())
    if arrays[Q_HAT_KEY].size != size:
        raise ValueError(f"context.state holds a Q_hat of {arrays[Q_HAT_KEY].size} values; the model has {size}")
    return WorkerMemory.from_arrays(arrays)


def store_memory(context: Context, memory: WorkerMemory) -> None:
    context.state[MEMORY_RECORD] = ConfigRecord({key: value.tobytes() for key, value in memory.to_arrays().items()})


def handle_train(message: Message, context: Context) -> Message:
    """Steps 6-13 of Algorithm 2 on this node; replies with the packed innovation or an empty skip."""
    settings = settings_of(context)
    problem = settings.problem
    partition_id = partition_of(context, problem.num_workers)
    objective = cached_objective(problem, partition_id)
    request = read_train_request(message)

    batch = None
    if request.batch_size > 0:
        batch = minibatch_indices(objective.num_samples, request.batch_size, problem.seed, partition_id, request.iteration)
    memory = load_memory(context, objective.model.size, request.theta.dtype)
    compressor = request.compressor
    rng = compression_rng(problem.seed, partition_id, request.iteration) if compressor.stochastic else None
    loss, upload = local_round(memory, objective, request.theta, batch, compressor, request.rule, request.instruction, rng)
    if upload is not None or request.instruction.reset:
        store_memory(context, memory)
    payload = None if upload is None else compressor.to_bytes(upload)
    return Message(reply_content(partition_id, loss, payload), reply_to=message)
