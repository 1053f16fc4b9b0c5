"""Bytes on the wire in both directions: GD, LAQ, two-way LAQ and the server-side (PS) rules; SGD, SLAQ-WK2 and theirs.

    python scripts/bytes_table.py --setting full        # logistic regression to the 1e-6 loss residual (Table 2's)
    python scripts/bytes_table.py --setting minibatch   # minibatch 500, alpha = 0.008, b = 3, 1,000 iterations (Table 3's)

Every row is a run of the Flower app: LaqStrategy and the ClientApp through the in-process Grid, so every message
goes through Flower's own serialisation and is measured as a SuperNode pushes and pulls it (``laq_fl.flower.wire``).
The residual ``f(model)/M - f*/M`` is computed here, centrally on the training data, after every round (``model``:
theta, or theta_tilde with two-way broadcasts), so the workers need not report losses: ``report-every = 0`` and a
skip is Flower's bare empty reply. ``--setting full`` stops a run at the first round whose residual is at most
``--tolerance``; a run that has not reached it after ``--max-rounds`` is reported with the smallest residual it
reached, and compared with GD at equal test accuracy. Writes results/bytes-<setting>.json and
results/runs/bytes-<setting>-<variant>.jsonl (one row per round).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord

from client_app import app as client_app
from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, git_revision, machine, optimum
from laq_fl.config import ProblemConfig
from laq_fl.flower import InProcessGrid, LaqStrategy, run_rounds
from laq_fl.models import FlatModel
from laq_fl.problem import build_problem
from laq_fl.protocol import RoundStats
from laq_fl.results import RoundLog
from laq_fl.run_config import parse_run_config

# (label, run-config overrides). Full setting: Table 2 (b = 4, alpha = 0.02); minibatch: Table 3 (b = 3, alpha = 0.008).
VARIANTS = {
    "full": [
        ("gd", {"algorithm": "gd"}),
        ("laq", {"algorithm": "laq"}),
        ("laq two-way b=8", {"algorithm": "laq", "downlink-bits": 8}),
        ("laq two-way b=4", {"algorithm": "laq", "downlink-bits": 4}),
        ("laq two-way b=2", {"algorithm": "laq", "downlink-bits": 2}),
        ("lag-ps", {"algorithm": "lag-ps"}),
        ("laq-ps", {"algorithm": "laq-ps"}),
        ("laq-ps two-way b=4", {"algorithm": "laq-ps", "downlink-bits": 4}),
    ],
    "minibatch": [
        ("sgd", {"algorithm": "sgd"}),
        ("slaq-wk2", {"algorithm": "slaq-wk2"}),
        ("slaq-wk2 two-way b=8", {"algorithm": "slaq-wk2", "downlink-bits": 8}),
        ("slaq-wk2 two-way b=4", {"algorithm": "slaq-wk2", "downlink-bits": 4}),
        ("slaq-wk2 two-way b=2", {"algorithm": "slaq-wk2", "downlink-bits": 2}),
        ("lasg-ps", {"algorithm": "lasg-ps"}),
        ("slaq-ps", {"algorithm": "slaq-ps"}),
        ("slaq-ps two-way b=4", {"algorithm": "slaq-ps", "downlink-bits": 4}),
    ],
}
SETTING = {
    "full": {"bits": 4, "lr": 0.02},
    "minibatch": {"bits": 3, "lr": 0.008, "batch-size": 500},
}
CLAIMS = {
    "full": "LAQ paper, Table 2 (uplink bits only, to the same residual): LAQ 1.95e7 bits against GD's 7.08e9 (0.28%); "
    "the journal version's two-way LAQ also quantizes the broadcast (b bits a coordinate instead of 32).",
    "minibatch": "LASG (Chen, Yin, Sun 2020): its rules \"typically save total communication by an order of magnitude\" "
    "against SGD; LAQ paper, Table 3 (uplink bits only): SLAQ 1.94e8 bits against SGD's 2.51e9.",
}


class Reached(Exception):
    """Raised from the evaluation hook to end a run at the round that reached the tolerance."""


def run_variant(
    label: str, run_config: dict, problem, f_star: float, tolerance: float | None, out_dir: Path, evaluate_every: int = 1
) -> list[dict]:
    settings = parse_run_config(run_config)
    grid = InProcessGrid(client_app, settings.num_clients, run_config)
    strategy = LaqStrategy(settings.algorithm, settings.num_clients, settings.report_every)
    log = RoundLog(out_dir / f"{run_config['run-name']}.jsonl", label)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        (theta,) = arrays.to_numpy_ndarrays()
        if server_round % evaluate_every == 0 or server_round == settings.rounds:
            residual = problem.training_loss(theta) - f_star
            test_loss, test_accuracy = problem.test_metrics(theta)
        else:  # written as null: the minibatch setting evaluates every few rounds only (it stops on no residual)
            residual = test_loss = test_accuracy = float("nan")
        # The workers' reported losses are left out: report-every = 0 makes them the uploaders' only.
        training = dataclasses.replace(strategy.round_stats.get(server_round, RoundStats()), train_loss=float("nan"))
        log.record(server_round, training, **{"residual": residual, "test-loss": test_loss, "test-accuracy": test_accuracy})
        if tolerance is not None and residual <= tolerance:
            raise Reached
        return MetricRecord({"residual": residual, "test-accuracy": test_accuracy})

    theta0 = FlatModel.named(problem.config.model).initial_parameters(problem.config.init, problem.config.seed, problem.config.dtype)
    try:
        run_rounds(strategy, grid, ArrayRecord([theta0]), settings.rounds, evaluate_fn=evaluate)
    except Reached:
        pass
    finally:
        log.close()
    return log.rows


def summarise(label: str, rows: list[dict], tolerance: float | None) -> dict:
    last = rows[-1]
    reached = tolerance is not None and last["residual"] <= tolerance
    return {
        "variant": label,
        "iterations": last["round"],
        "reached": reached,
        "residual": last["residual"],
        "best_residual": min(row["residual"] for row in rows if row["residual"] == row["residual"]),
        "uploads": last["uploads-cum"],
        "messages": sum(row.get("uploads", 0) + row.get("skips", 0) + row.get("rejected", 0) for row in rows),
        "not_contacted": sum(row.get("not-contacted", 0) for row in rows),
        "full_broadcasts": sum(row.get("full-broadcasts", 0) for row in rows),
        "payload_bits": last["payload-bits-cum"],
        "downlink_payload_bits": last["downlink-payload-bits-cum"],
        "uplink_bytes": last["uplink-bytes-cum"],
        "downlink_bytes": last["downlink-bytes-cum"],
        "total_bytes": last["total-bytes-cum"],
        "test_accuracy": last["test-accuracy"],
        "seconds": last["wall-seconds"],
    }


def at_accuracy(rows: list[dict], accuracy: float) -> dict | None:
    """The first round whose test accuracy is at least ``accuracy``: round and total bytes so far."""
    for row in rows:
        if row["round"] > 0 and row["test-accuracy"] == row["test-accuracy"] and row["test-accuracy"] >= accuracy:
            return {"round": row["round"], "total_bytes": row["total-bytes-cum"]}
    return None


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    reference = rows[0]
    lines = [
        "| variant | iterations | uploads | messages sent | not contacted | full θ̃ sent | uplink B | downlink B | total B "
        f"| total / {reference['variant'].upper()} | test acc | residual |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        residual = f"{row['residual']:.2e}" + ("" if row["reached"] or summary["tolerance"] is None else " (not reached)")
        lines.append(
            f"| {row['variant'].upper()} | {row['iterations']:,} | {row['uploads']:,} | {row['messages']:,} | {row['not_contacted']:,} "
            f"| {row['full_broadcasts']:,} | {row['uplink_bytes']:.3g} | {row['downlink_bytes']:.3g} | {row['total_bytes']:.3g} "
            f"| {row['total_bytes'] / reference['total_bytes']:.1%} | {row['test_accuracy']:.4f} | {residual} |"
        )
    if summary.get("equal_accuracy"):
        lines.append("")
        lines.append(f"At {reference['variant'].upper()}'s final test accuracy ({reference['test_accuracy']:.4f}), first round and total bytes: "
                     + "; ".join(f"{name.upper()} round {value['round']:,}, {value['total_bytes']:.3g} B "
                                 f"({value['total_bytes'] / summary['equal_accuracy'][reference['variant']]['total_bytes']:.1%})"
                                 for name, value in summary["equal_accuracy"].items() if value))
    lines.append("")
    lines.append(summary["claims"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="loss residual that ends a run (full setting)")
    parser.add_argument("--max-rounds", type=int, default=6000, help="full setting: give up after this many rounds")
    parser.add_argument("--iterations", type=int, default=1000, help="minibatch setting: rounds")
    parser.add_argument("--variants", nargs="+", help="labels to run (default: all of the setting)")
    parser.add_argument("--evaluate-every", type=int, help="rounds between residual evaluations (default: 1 full, 10 minibatch)")
    args = parser.parse_args()
    revision = git_revision()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    data_dir = str(Path(args.data_dir).resolve())
    out_dir = args.out_dir.resolve()
    problem_config = ProblemConfig(data_dir=data_dir)
    problem = build_problem(problem_config)
    f_star = optimum(problem_config, out_dir / "cache")["loss"]
    full = args.setting == "full"
    tolerance = args.tolerance if full else None

    results = []
    per_round = {}
    for label, overrides in VARIANTS[args.setting]:
        if args.variants and label not in args.variants:
            continue
        run_config = {
            **SETTING[args.setting], **overrides, "rounds": args.max_rounds if full else args.iterations, "report-every": 0,
            "data-dir": data_dir, "out-dir": str(out_dir / "runs"),
            "run-name": f"bytes-{args.setting}-{label.replace(' ', '-').replace('=', '')}",
        }
        started = time.perf_counter()
        evaluate_every = args.evaluate_every or (1 if full else 10)
        rows = run_variant(label, run_config, problem, f_star, tolerance, out_dir / "runs", evaluate_every)
        per_round[label] = rows
        results.append(summarise(label, rows, tolerance))
        print(json.dumps(results[-1]), f"({time.perf_counter() - started:.0f} s)", flush=True)

    reference = results[0]
    summary = {
        "setting": args.setting, "tolerance": tolerance, "f_star": f_star, "machine": machine(), "revision": revision,
        "claims": CLAIMS[args.setting], "rows": results,
        "equal_accuracy": {label: at_accuracy(rows, reference["test_accuracy"]) for label, rows in per_round.items()},
        "command": f"python scripts/bytes_table.py --setting {args.setting}"
        + (f" --variants {' '.join(repr(v) for v in args.variants)}" if args.variants else ""),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bytes-{args.setting}.json").write_text(json.dumps(summary, indent=2))
    print(markdown(summary))


if __name__ == "__main__":
    main()
