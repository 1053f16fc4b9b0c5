"""The ServerApp's main: parse the run config, wait for the nodes, run the strategy, write results."""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from laq_fl.flower.strategy import LaqStrategy
from laq_fl.models import FlatModel
from laq_fl.problem import test_evaluator
from laq_fl.results import RoundLog
from laq_fl.run_config import RunSettings, parse_run_config

NO_TRAINING = {
    "uploads": 0, "skips": 0, "rejected": 0, "not-contacted": 0, "full-broadcasts": 0, "payload-bits": 0,
    "downlink-payload-bits": 0, "uplink-bytes": 0, "downlink-bytes": 0, "loss-reports": 0,
}


def wait_for_nodes(grid: Grid, expected: int, timeout: float, poll: float = 0.5) -> list[int]:
    """Block until ``expected`` nodes are connected (simulated nodes register after the ServerApp starts)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"num-clients={expected} but only {len(nodes)} node(s) connected within node-wait-timeout={timeout} s; "
                'start more SuperNodes or pass --federation-config "num-supernodes=N"'
            )
        time.sleep(poll)


def results_path(settings: RunSettings, run_id: int) -> Path:
    name = settings.run_name or f"{settings.algorithm.algorithm}-{settings.problem.model}-{run_id}"
    return Path(settings.out_dir) / f"{name}.jsonl"


def run_server(grid: Grid, context: Context) -> Result:
    """Run ``rounds`` rounds of the configured member of the LAQ family and write one results row per round."""
    settings = parse_run_config(context.run_config)  # a bad key stops the run here, before round 1
    nodes = wait_for_nodes(grid, settings.num_clients, settings.node_wait_timeout)
    log(INFO, "%d node(s) connected; running %s for %d rounds", len(nodes), settings.algorithm.algorithm, settings.rounds)

    problem = settings.problem
    initial_theta = FlatModel.named(problem.model).initial_parameters(problem.init, problem.seed, problem.dtype)
    strategy = LaqStrategy(settings.algorithm, settings.num_clients, settings.report_every)
    evaluate_theta = test_evaluator(problem)
    results = RoundLog(results_path(settings, context.run_id), settings.algorithm.algorithm)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        (theta,) = arrays.to_numpy_ndarrays()
        test_loss, test_accuracy = evaluate_theta(theta)
        training = strategy.round_metrics.get(server_round, {**NO_TRAINING, "train-loss": float("nan")})
        # How train-loss is formed: every contacted worker's loss in report rounds, the uploaders' otherwise.
        formed = "none" if server_round == 0 else ("contacted" if strategy.reports_in(server_round) else "uploads")
        row = results.record(
            server_round, **training, **{"train-loss-of": formed, "test-loss": test_loss, "test-accuracy": test_accuracy}
        )
        log(
            INFO,
            "round %d: %d uploads (%d total), %.4g B on the wire total, train loss %.6f (%d of %d workers), "
            "test accuracy %.4f, %.3f s",
            server_round,
            row["uploads"],
            row["uploads-cum"],
            row["total-bytes-cum"],
            row["train-loss"],
            row["loss-reports"],
            settings.num_clients,
            test_accuracy,
            row["round-seconds"],
        )
        return MetricRecord({"test-loss": test_loss, "test-accuracy": test_accuracy})

    try:
        result = strategy.start(
            grid,
            ArrayRecord([initial_theta]),
            num_rounds=settings.rounds,
            timeout=settings.round_timeout,
            evaluate_fn=evaluate,
        )
    finally:
        results.close()
    log(INFO, "LAQ summary: %s", results.summary())
    return result
