"""A plain in-process run of the LAQ family: M workers and the server, no Flower.

This is the fast path for experiments and the oracle the Flower app must match exactly:
every upload goes through the same payload bytes, server state, memory and rule as in the app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from laq_fl.compressors import compression_rng
from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.data import minibatch_indices
from laq_fl.problem import Problem, build_problem
from laq_fl.server_state import ServerState
from laq_fl.worker import WorkerParts, WorkerState, local_round


@dataclass(frozen=True)
class IterationRecord:
    """Iteration k: uploads and losses at ``theta^k``; test metrics at ``theta^{k+1}``, the model it produced.
    With two-way broadcasts both are at the workers' ``theta_tilde`` (the model everyone holds).

    This is the row of round ``k + 1`` in the Flower app's results file.
    """

    iteration: int
    uploads: int
    payload_bits: int
    """Uplink: the compressors' counts over this iteration's uploads."""
    train_loss: float
    """``f(theta^k) / M``; for minibatch members, on the full data only at evaluated iterations (else NaN)."""
    minibatch_loss: float
    """Mean of the losses the workers reported on the data they used this iteration."""
    test_loss: float
    test_accuracy: float
    seconds: float
    downlink_bits: int = 0
    """The iterate's bits in this iteration's broadcasts: ``32 p`` per worker contacted one-way; two-way, the
    downlink compressor's count per innovation sent, or ``32 p`` for a full ``theta_tilde``."""
    full_broadcasts: int = 0
    """Two-way: workers sent the full ``theta_tilde`` (first contact, or behind by more than the recent innovations)."""
    contacted: int = 0


@dataclass
class RunResult:
    algorithm: AlgorithmConfig
    problem: ProblemConfig
    records: list[IterationRecord] = field(default_factory=list)
    theta: np.ndarray | None = None

    def column(self, name: str) -> np.ndarray:
        return np.array([getattr(record, name) for record in self.records])

    @property
    def total_uploads(self) -> int:
        return int(sum(record.uploads for record in self.records))

    @property
    def total_bits(self) -> int:
        return int(sum(record.payload_bits for record in self.records))

    @property
    def total_downlink_bits(self) -> int:
        return int(sum(record.downlink_bits for record in self.records))


IterationCallback = Callable[[int, ServerState, list[WorkerState]], None]


def run_in_process(
    algorithm: AlgorithmConfig,
    problem: ProblemConfig | Problem,
    iterations: int,
    *,
    evaluate_every: int = 1,
    on_iteration: IterationCallback | None = None,
    on_record: Callable[[IterationRecord], None] | None = None,
    stop_when: Callable[[IterationRecord], bool] | None = None,
) -> RunResult:
    """Run ``iterations`` rounds of ``algorithm`` on ``problem`` with every worker in this process.

    ``on_iteration(k, server, workers)`` is called after each server step, for checks and logging,
    ``on_record(record)`` with each iteration's record (for progress bars);
    the run ends early after the first record for which ``stop_when(record)`` is true.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if isinstance(problem, ProblemConfig):
        problem = build_problem(problem)
    config = problem.config
    num_workers = len(problem.objectives)
    minibatch = algorithm.spec.minibatch
    dtype = problem.initial_theta.dtype

    server = ServerState(problem.initial_theta, algorithm, num_workers, problem.vector_device)
    parts = WorkerParts(server.compressor, server.memory, algorithm.rule.worker)
    workers = [WorkerState.zeros(problem.size, dtype) for _ in range(num_workers)]
    result = RunResult(algorithm=algorithm, problem=config)

    downlink = None if server.downlink is None else server.downlink.compressor
    for k in range(iterations):
        started = time.perf_counter()
        theta = server.iterate  # where the workers compute: theta^k, or theta_tilde^k with two-way broadcasts
        uploads = 0
        bits_sent = 0
        downlink_bits = 0
        full_broadcasts = 0
        losses = []
        for m, (objective, state) in enumerate(zip(problem.objectives, workers)):
            instruction = server.instruction(m)
            if instruction is None:  # the rule's server half does not contact m this round
                server.skip(m)
                continue
            broadcast = server.broadcast(m)
            downlink_bits += broadcast.payload_bits(downlink, problem.size)
            full_broadcasts += broadcast.full and downlink is not None
            worker_theta = state.receive(broadcast, downlink)
            batch = minibatch_indices(objective.num_samples, algorithm.batch_size, config.seed, m, k) if minibatch else None
            rng = compression_rng(config.seed, m, k) if parts.compressor.needs_rng else None
            loss, payload = local_round(state, objective, worker_theta, parts, instruction, batch=batch, rng=rng)
            losses.append(loss)
            server.delivered(m)
            if payload is None:
                server.skip(m)
            else:
                server.accept(m, payload, workers[m].last_error_sq)
                uploads += 1
                bits_sent += server.payload_bits(payload)

        evaluated = evaluate_every > 0 and (k % evaluate_every == 0 or k == iterations - 1)
        minibatch_loss = float(np.mean(losses)) if losses else float("nan")
        if not minibatch and len(losses) == num_workers:
            train_loss = minibatch_loss
        elif not minibatch:  # a server-side rule left workers out: f(theta)/M computed here, every iteration
            train_loss = problem.training_loss(theta)
        else:
            train_loss = problem.training_loss(theta) if evaluated else float("nan")
        server.step()
        model = server.iterate  # theta^{k+1}, or theta_tilde^{k+1}: the model the workers will hold
        test_loss, test_accuracy = problem.test_metrics(model) if evaluated else (float("nan"), float("nan"))
        result.records.append(
            IterationRecord(
                iteration=k,
                uploads=uploads,
                payload_bits=bits_sent,
                train_loss=train_loss,
                minibatch_loss=minibatch_loss,
                test_loss=test_loss,
                test_accuracy=test_accuracy,
                seconds=time.perf_counter() - started,
                downlink_bits=downlink_bits,
                full_broadcasts=full_broadcasts,
                contacted=len(losses),
            )
        )
        if on_iteration is not None:
            on_iteration(k, server, workers)
        if on_record is not None:
            on_record(result.records[-1])
        if stop_when is not None and stop_when(result.records[-1]):
            break
    result.theta = server.iterate
    return result
