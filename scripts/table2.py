"""Table 2 of Sun et al. (NeurIPS 2019) with the Flower app: GD, QGD, LAG and LAQ on MNIST, M = 10.

    python scripts/table2.py --model logistic   # each algorithm until f(theta^k)/M - f*/M <= 1e-6
    python scripts/table2.py --model mlp --iterations 1000
    python scripts/table2.py --model logistic --driver-only --algorithms laq lag   # the counts alone, no Flower app

Logistic: the in-process driver finds the iteration K at which the loss residual first reaches the
tolerance (f* from a cached float64 L-BFGS solve); the Flower app (ServerApp, LaqStrategy and ClientApp
through the in-process Grid, with real message serialisation) then runs K + 1 rounds, which must reach
it at the same iterate, and the table is read from its results file. MLP: the Flower app runs a fixed
number of iterations. Writes results/table2-<model>.json and results/runs/*.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, PAPER, flower_table_row, git_revision, machine, markdown_table, optimum
from laq_fl.config import ALGORITHMS as REGISTERED, AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from progress import record_hook, run_progress

ALGORITHMS = ("gd", "qgd", "lag", "laq")
BITS = {"logistic": 4, "mlp": 8}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["logistic", "mlp"], default="logistic")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="loss residual that ends a logistic run")
    parser.add_argument("--max-iterations", type=int, default=6000)
    parser.add_argument("--iterations", type=int, default=1000, help="fixed iterations for the mlp")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--driver-only", action="store_true",
                        help="logistic: print the driver's iterations, uploads and bits to the tolerance; no Flower app")
    args = parser.parse_args()
    revision = git_revision()  # the code that runs is the code checked out now, not at the end
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data_dir = str(Path(args.data_dir).resolve())
    out_dir = args.out_dir.resolve()
    problem = ProblemConfig(model=args.model, data_dir=data_dir)
    bits = BITS[args.model]

    f_star = None
    if args.model == "logistic":
        solved = optimum(problem, out_dir / "cache")
        f_star = solved["loss"]
        print(f"f*/M = {f_star:.12f} (|grad f/M| = {solved['grad_norm']:.1e})")

    server_side = [name for name in args.algorithms if REGISTERED[name].rule == "ps"]
    if server_side:  # their workers do not all report every round, so the app's train-loss is not f(theta^k)/M
        raise SystemExit(f"{', '.join(server_side)}: server-side rules; run them with scripts/bytes_table.py")
    rows = []
    for name in args.algorithms:
        started = time.perf_counter()
        if f_star is not None:
            with run_progress(f"{name} to the tolerance", args.max_iterations) as update:
                reached = run_in_process(
                    AlgorithmConfig(algorithm=name, bits=bits), problem, args.max_iterations, evaluate_every=0,
                    stop_when=lambda record: record.train_loss - f_star <= args.tolerance, on_record=record_hook(update),
                )
            iterations = len(reached.records) - 1  # the last record is f(theta^K), K steps in
            if reached.records[-1].train_loss - f_star > args.tolerance:
                raise SystemExit(f"{name} did not reach the tolerance in {args.max_iterations} iterations")
            rounds = iterations + 1
            if args.driver_only:  # uploads and bits of iterations 0..K-1, as the table counts them
                counted = reached.records[:-1]
                print(json.dumps({"algorithm": name, "iterations": iterations,
                                  "uploads": sum(record.uploads for record in counted),
                                  "payload_bits": sum(record.payload_bits for record in counted),
                                  "seconds": time.perf_counter() - started}), flush=True)
                continue
        else:
            iterations = rounds = args.iterations
        run_config = {
            "algorithm": name, "model": args.model, "bits": bits, "rounds": rounds, "data-dir": data_dir,
            "out-dir": str(out_dir / "runs"), "run-name": f"table2-{args.model}-{name}",
            "report-every": 1,  # f(theta^k)/M from every worker every round: the table reads the residual from it
        }
        row, flower_rows = flower_table_row(run_config, iterations)
        row["seconds"] = time.perf_counter() - started  # driver search included
        if f_star is not None:
            final_loss = flower_rows[rounds]["train-loss"]  # f(theta^K)/M, reported in round K + 1
            previous = flower_rows[rounds - 1]["train-loss"]
            if not (final_loss - f_star <= args.tolerance < previous - f_star):
                raise SystemExit(f"{name}: the Flower app did not reach the tolerance at iteration {iterations} as the driver did")
            row["loss_residual"] = final_loss - f_star
        rows.append(row)
        print(json.dumps(row))

    if args.driver_only:
        return
    summary = {
        "model": args.model, "bits": bits, "tolerance": args.tolerance if f_star is not None else None, "f_star": f_star,
        "machine": machine(), "revision": revision, "rows": rows,
        "command": f"python scripts/table2.py --model {args.model}" + ("" if f_star is not None else f" --iterations {args.iterations}"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"table2-{args.model}.json").write_text(json.dumps(summary, indent=2))
    print(markdown_table(rows, PAPER[f"table2-{args.model}"], reference="gd", lazy="laq"))


if __name__ == "__main__":
    main()
