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
from laq_fl.protocol import RoundStats
from laq_fl.server_state import ServerState
from laq_fl.worker import WorkerParts, WorkerState, local_round


@dataclass(frozen=True)
class IterationRecord:
    """Iteration k: what it counted (``stats``, the Flower app's round statistics, at ``theta^k``) and the test
    metrics at ``theta^{k+1}``, the model it produced. With two-way broadcasts both are at the workers'
    ``theta_tilde`` (the model everyone holds). This is the row of round ``k + 1`` in the Flower app's results file.

    ``stats`` holds uploads, skips, not-contacted workers, the uplink and downlink payload bits (the iterate's bits:
    ``32 p`` per worker contacted one-way; two-way, the downlink compressor's count per innovation, or ``32 p`` for a
    full ``theta_tilde``), full broadcasts, and the mean of the losses the contacted workers reported
    (``train_loss`` and ``loss_reports``); no bytes (the driver has no wire) and no faults.
    """

    iteration: int
    stats: RoundStats
    train_loss: float
    """``f(theta^k) / M``; for minibatch members, on the full data only at evaluated iterations (else NaN)."""
    test_loss: float
    test_accuracy: float
    seconds: float

    @property
    def uploads(self) -> int:
        return self.stats.uploads

    @property
    def payload_bits(self) -> int:
        """Uplink: the compressors' counts over this iteration's uploads."""
        return self.stats.payload_bits

    @property
    def downlink_bits(self) -> int:
        """The iterate's bits in this iteration's broadcasts."""
        return self.stats.downlink_payload_bits

    @property
    def full_broadcasts(self) -> int:
        """Two-way: workers sent the full ``theta_tilde`` (first contact, or behind by more than the recent innovations)."""
        return self.stats.full_broadcasts

    @property
    def contacted(self) -> int:
        """Workers that computed this iteration (the rule's server half may leave some alone)."""
        return self.stats.uploads + self.stats.skips

    @property
    def minibatch_loss(self) -> float:
        """Mean of the losses the workers reported on the data they used this iteration."""
        return self.stats.train_loss


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
        stats = RoundStats()
        losses = []
        for m, (objective, state) in enumerate(zip(problem.objectives, workers)):
            instruction = server.instruction(m)
            if instruction is None:  # the rule's server half does not contact m this round
                server.skip(m)
                stats.not_contacted += 1
                continue
            broadcast = server.broadcast(m)
            stats.downlink_payload_bits += broadcast.payload_bits(downlink, problem.size)
            stats.full_broadcasts += broadcast.full and downlink is not None
            worker_theta = state.receive(broadcast, downlink)
            batch = minibatch_indices(objective.num_samples, algorithm.batch_size, config.seed, m, k) if minibatch else None
            rng = compression_rng(config.seed, m, k) if parts.compressor.needs_rng else None
            loss, payload = local_round(state, objective, worker_theta, parts, instruction, batch=batch, rng=rng)
            losses.append(loss)
            server.delivered(m)
            if payload is None:
                server.skip(m)
                stats.skips += 1
            else:
                server.accept(m, payload, workers[m].last_error_sq)
                stats.uploads += 1
                stats.payload_bits += server.payload_bits(payload)
        stats.train_loss = float(np.mean(losses)) if losses else float("nan")
        stats.loss_reports = len(losses)

        evaluated = evaluate_every > 0 and (k % evaluate_every == 0 or k == iterations - 1)
        if not minibatch and len(losses) == num_workers:
            train_loss = stats.train_loss
        elif not minibatch:  # a server-side rule left workers out: f(theta)/M computed here, every iteration
            train_loss = problem.training_loss(theta)
        else:
            train_loss = problem.training_loss(theta) if evaluated else float("nan")
        server.step()
        model = server.iterate  # theta^{k+1}, or theta_tilde^{k+1}: the model the workers will hold
        test_loss, test_accuracy = problem.test_metrics(model) if evaluated else (float("nan"), float("nan"))
        result.records.append(IterationRecord(iteration=k, stats=stats, train_loss=train_loss, test_loss=test_loss,
                                              test_accuracy=test_accuracy, seconds=time.perf_counter() - started))
        if on_iteration is not None:
            on_iteration(k, server, workers)
        if on_record is not None:
            on_record(result.records[-1])
        if stop_when is not None and stop_when(result.records[-1]):
            break
    result.theta = server.iterate
    return result
