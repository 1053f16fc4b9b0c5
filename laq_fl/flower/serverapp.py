"""The ServerApp's main: parse the run config, wait for the nodes, run (or resume) the rounds, write results
and checkpoints.

The round loop is :func:`run_rounds`: Flower's ``Strategy.start`` loop plus what LAQ needs of it -- a first round
after 1 (a resumed run), the in-round follow-up (:meth:`~laq_fl.flower.strategy.LaqStrategy.follow_up`: a worker that
lost its state is restored within the round), and a hook after each round (checkpoints). The strategy itself only
implements Flower's hooks, so ``LaqStrategy(...).start(grid, arrays, num_rounds)`` runs too (without the follow-up).

Checkpoints (``checkpoint-every`` rounds, and after the last) go to ``<out-dir>/checkpoints/<run-name>.npz``
(:mod:`laq_fl.checkpoint`); ``resume = true`` with the same ``run-name`` loads the newest, checks that the run config
differs only in keys that change no iterate (:data:`~laq_fl.run_config.RESUMABLE_CHANGES`), continues the results
file after the checkpoint's round, and goes on from the next round: every worker's state comes back from the
server's copy (a restore), so the resumed run's iterates equal an uninterrupted run's bit for bit (error-feedback
residuals excepted). The results file ends with a status line, "completed" or "failed" with the error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from laq_fl.checkpoint import config_differences, load_checkpoint, save_checkpoint
from laq_fl.errors import CheckpointError, ConfigError
from laq_fl.flower.strategy import LaqStrategy
from laq_fl.problem import check_problem, flat_model, partition_sizes, test_evaluator
from laq_fl.protocol import RoundStats
from laq_fl.results import RoundLog
from laq_fl.run_config import RESUMABLE_CHANGES, RunSettings, parse_run_config
from laq_fl.server_state import ServerState


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
                "in a deployment, start a SuperNode per partition (--node-config \"partition-id=P num-partitions=N\"); "
                'in a simulation, pass --federation-config "num-supernodes=N"'
            )
        time.sleep(poll)


def results_path(settings: RunSettings, run_id: int) -> Path:
    return Path(settings.out_dir) / f"{settings.name(run_id)}.jsonl"


def run_server(grid: Grid, context: Context, on_row: Callable[[dict], None] | None = None) -> Result:
    """Run ``rounds`` rounds of the configured member of the LAQ family and write one results row per round.

    ``on_row(row)``: called with each results row (round 0 first) as it is written, e.g. for a progress bar."""
    settings = parse_run_config(context.run_config)  # a bad key stops the run here, before round 1,
    check_problem(settings.problem)  # as does a task that does not import or a device torch cannot see
    opened: list[RoundLog] = []  # the results log, once _run has opened it
    try:
        return _run(grid, context, settings, opened, on_row)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        if opened:
            opened[0].finish("failed", message)
        else:  # stopped before the results file was opened (no nodes, no test data, a refused resume)
            path = results_path(settings, context.run_id)
            if settings.resume and path.exists():
                # The file is the earlier run's record (completed, or cut short): a refused resume leaves it as it is.
                log(ERROR, "resume refused; %s is left as it was: %s", path, message)
            else:
                try:
                    failure_line(path, settings.algorithm.algorithm, message)
                except OSError as write_error:  # e.g. an out-dir that cannot be made: the error says so already
                    log(ERROR, "could not write the failure to %s: %s", path, write_error)
        raise
    finally:
        for results in opened:
            results.close()


def failure_line(path: Path, algorithm: str, error: str) -> None:
    """Append a ``failed`` status line to ``path`` (created if absent) for a run that stopped before its rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps({"status": "failed", "algorithm": algorithm, "rounds": 0, "error": error}) + "\n")


def _run(grid: Grid, context: Context, settings: RunSettings, opened: list[RoundLog],
         on_row: Callable[[dict], None] | None = None) -> Result:
    out_dir = Path(settings.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("out-dir", f"{out_dir} cannot hold the results and checkpoints: {error}") from None
    problem = settings.problem
    # The task's test data first: a task that does not fit its data stops here, before any node waits.
    initial_theta = flat_model(problem).initial_parameters(problem.init, problem.seed, problem.dtype)
    evaluate_theta = test_evaluator(problem)
    try:
        sizes = partition_sizes(problem)
    except (ValueError, ZeroDivisionError, IndexError) as error:  # Flower Datasets' partitioners raise all three
        key = "num-clients" if str(error).startswith("cannot split") else "partition"
        raise ConfigError(key, f"{problem.partition!r} over {problem.num_workers} workers: {error}") from None
    log(INFO, "Partition %s: %d workers with %d..%d training samples", problem.partition, len(sizes), min(sizes),
        max(sizes))

    nodes = wait_for_nodes(grid, settings.num_clients, settings.node_wait_timeout)
    log(INFO, "%d node(s) connected; running %s for %d rounds", len(nodes), settings.algorithm.algorithm, settings.rounds)
    strategy = LaqStrategy(settings.algorithm, settings.num_clients, settings.report_every, settings.node_wait_timeout,
                           num_rounds=settings.rounds, round_timeout=settings.round_timeout)
    checkpoint = settings.checkpoint_path(context.run_id)
    first_round = 1
    if settings.resume:
        first_round, results = resume_from(checkpoint, settings, strategy)
        opened.append(results)
        initial_theta = strategy.state.iterate
    else:
        results = RoundLog(results_path(settings, context.run_id), settings.algorithm.algorithm)
        opened.append(results)

    def on_round_end(server_round: int) -> None:
        if settings.checkpoint_every and (server_round % settings.checkpoint_every == 0 or server_round == settings.rounds):
            meta = {"round": server_round, "run-config": dict(settings.values), "results": str(results.path)}
            save_checkpoint(checkpoint, strategy.state.to_arrays(), meta)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        (theta,) = arrays.to_numpy_ndarrays()
        test_loss, test_accuracy = evaluate_theta(theta)
        training = strategy.round_stats.get(server_round, RoundStats())  # round 0: nothing trained yet
        # How train-loss is formed: every contacted worker's loss in report rounds, the uploaders' otherwise.
        formed = "none" if server_round == 0 else ("contacted" if strategy.reports_in(server_round) else "uploads")
        row = results.record(server_round, training,
                             **{"train-loss-of": formed, "test-loss": test_loss, "test-accuracy": test_accuracy})
        if on_row is not None:
            on_row(row)
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

    result = run_rounds(strategy, grid, ArrayRecord([initial_theta]), settings.rounds, evaluate_fn=evaluate,
                        first_round=first_round, on_round_end=on_round_end)
    results.finish("completed")
    log(INFO, "LAQ summary: %s", results.summary())
    return result


def run_rounds(
    strategy: LaqStrategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    *,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    first_round: int = 1,
    on_round_end: Callable[[int], None] | None = None,
) -> Result:
    """Rounds ``first_round..num_rounds`` of ``strategy`` from theta = ``initial_arrays`` (one flat float array).

    Flower's ``Strategy.start`` loop (no federated evaluation: ``evaluate_fn(round, arrays)`` evaluates centrally,
    round 0 included when ``first_round`` is 1) with three additions: ``first_round`` > 1 continues a resumed run
    whose ``strategy.state`` the caller restored; within each round, the strategy's
    :meth:`~laq_fl.flower.strategy.LaqStrategy.follow_up` messages are sent and their replies added before
    ``aggregate_train``; ``on_round_end(round)`` runs after each round's evaluation (the ServerApp checkpoints there).
    Sets ``strategy.num_rounds`` (its last round reports), and after it calls ``strategy.check_complete()``, which
    raises :class:`~laq_fl.errors.RunStopped` when a partition did not contribute; replies wait
    ``strategy.round_timeout`` seconds.
    """
    strategy.num_rounds = num_rounds
    timeout = strategy.round_timeout
    log(INFO, "Starting %s strategy: rounds %d..%d", type(strategy).__name__, first_round, num_rounds)
    strategy.summary()
    result = Result()
    arrays = ArrayRecord([strategy.state.iterate]) if first_round > 1 and strategy.state is not None else initial_arrays
    result.arrays = arrays  # a resumed run with no round left returns the checkpoint's model
    if evaluate_fn is not None and first_round == 1:
        metrics = evaluate_fn(0, arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[0] = metrics
    for server_round in range(first_round, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies, again = strategy.follow_up(server_round, list(grid.send_and_receive(messages, timeout=timeout)))
        if again:
            replies += list(grid.send_and_receive(again, timeout=timeout))
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        if evaluate_fn is not None:
            metrics = evaluate_fn(server_round, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
        if on_round_end is not None:
            on_round_end(server_round)
    strategy.check_complete()  # the last row and checkpoint are written: a failed end can still be resumed
    return result


def resume_from(path: Path, settings: RunSettings, strategy: LaqStrategy) -> tuple[int, RoundLog]:
    """Load the checkpoint into ``strategy.state``; the first round to run and the results log to append to.

    Raises :class:`~laq_fl.checkpoint.CheckpointError` when there is no checkpoint, when it belongs to a run config
    that differs in a key that changes the iterates (naming them), or when it is past ``rounds``.
    """
    arrays, meta = load_checkpoint(path)
    differences = config_differences(meta["run-config"], dict(settings.values), set(RESUMABLE_CHANGES))
    if differences:
        raise CheckpointError(
            f"resume: the checkpoint {path} belongs to a run with other values of {', '.join(differences)} "
            f"(e.g. {differences[0]} = {meta['run-config'].get(differences[0])!r}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )
    done = int(meta["round"])
    if done > settings.rounds:
        raise CheckpointError(f"resume: the checkpoint {path} is after round {done}, past rounds = {settings.rounds}")
    try:
        strategy.state = ServerState.from_arrays(arrays, settings.algorithm, settings.num_clients)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"cannot read the checkpoint {path}: {type(error).__name__}: {error}") from error
    results = RoundLog(Path(meta["results"]), settings.algorithm.algorithm, resume_after=done)
    log(INFO, "Resuming %s after round %d from %s; results continue in %s", settings.algorithm.algorithm, done, path,
        results.path)
    return done + 1, results
