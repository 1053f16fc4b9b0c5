"""How much LAQ's Table 2 upload count moves with the starting point and with the authors' rule weights.

    python scripts/laq_upload_spread.py --seeds 0 1 2 3 4

For each seed (the Glorot draw of theta^0), the in-process driver runs GD, LAQ (rule 7a as printed)
and LAQ with ``xi-warmup`` (the authors' early-iteration weights) on the Table 2 logistic problem
until f(theta^k)/M - f*/M <= 1e-6, and reports uploads and payload bits as shares of GD's at the
same seed, next to the paper's 2.20% and 0.275%. Results accumulate in results/laq-upload-spread.json
(an interrupted run resumes); the table goes to results/laq-upload-spread.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from experiments import DEFAULT_DATA_DIR, DEFAULT_OUT_DIR, PAPER, git_revision, machine, optimum
from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process
from progress import record_hook, run_progress

VARIANTS = {
    "gd": AlgorithmConfig(algorithm="gd"),
    "laq": AlgorithmConfig(algorithm="laq", bits=4),
    "laq-warmup": AlgorithmConfig(algorithm="laq", bits=4, xi_warmup=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--max-iterations", type=int, default=6000)
    args = parser.parse_args()
    out_dir = args.out_dir.resolve()
    data_dir = str(Path(args.data_dir).resolve())
    f_star = optimum(ProblemConfig(data_dir=data_dir), out_dir / "cache")["loss"]  # the start does not change f*
    path = out_dir / "laq-upload-spread.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    revision, this_machine = git_revision(), machine()
    report.update(f_star=f_star, tolerance=args.tolerance)

    for seed in args.seeds:
        for name, config in VARIANTS.items():
            key = f"{seed}/{name}"
            if key in report["runs"]:
                continue
            started = time.perf_counter()
            with run_progress(key, args.max_iterations) as update:
                result = run_in_process(
                    config, ProblemConfig(data_dir=data_dir, seed=seed), args.max_iterations, evaluate_every=0,
                    stop_when=lambda record: record.train_loss - f_star <= args.tolerance, on_record=record_hook(update),
                )
            if result.records[-1].train_loss - f_star > args.tolerance:
                raise SystemExit(f"seed {seed} {name}: no convergence in {args.max_iterations} iterations")
            report["runs"][key] = {
                "iterations": len(result.records) - 1, "uploads": result.total_uploads, "payload_bits": result.total_bits,
                "seconds": time.perf_counter() - started, "revision": revision, "machine": this_machine,
            }
            print(key, json.dumps(report["runs"][key]), flush=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2))

    paper = PAPER["table2-logistic"]
    lines = [
        "| seed | GD iterations / uploads | LAQ iterations / uploads | LAQ / GD uploads, bits "
        "| LAQ + warm-up iterations / uploads | LAQ + warm-up / GD uploads, bits |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    shares: dict[str, list[tuple[float, float]]] = {"laq": [], "laq-warmup": []}
    for seed in args.seeds:
        gd = report["runs"][f"{seed}/gd"]
        cells = [f"{gd['iterations']:,} / {gd['uploads']:,}"]
        for name in ("laq", "laq-warmup"):
            run = report["runs"][f"{seed}/{name}"]
            share = (run["uploads"] / gd["uploads"], run["payload_bits"] / gd["payload_bits"])
            shares[name].append(share)
            cells += [f"{run['iterations']:,} / {run['uploads']:,}", f"{share[0]:.2%}, {share[1]:.3%}"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    for name, label in (("laq", "LAQ"), ("laq-warmup", "LAQ + warm-up")):
        uploads = [share[0] for share in shares[name]]
        bits = [share[1] for share in shares[name]]
        lines.append(
            f"\n{label} / GD over seeds {args.seeds}: uploads {statistics.mean(uploads):.2%} "
            f"(min {min(uploads):.2%}, max {max(uploads):.2%}), payload bits {statistics.mean(bits):.3%} "
            f"(min {min(bits):.3%}, max {max(bits):.3%})."
        )
    # Runs may come from several invocations: name every revision and machine they ran on
    # (files written before runs carried their own keep one of each at the top level).
    runs = [run for key, run in report["runs"].items() if int(key.split("/")[0]) in args.seeds]
    revisions = sorted({run.get("revision", report.get("revision", "unknown")) for run in runs})
    machines = sorted({run.get("machine", report.get("machine", "unknown")) for run in runs})
    lines.append(
        f"\nPaper: uploads {paper['laq'][1] / paper['gd'][1]:.2%}, bits {paper['laq'][2] / paper['gd'][2]:.3%}. "
        f"`python scripts/laq_upload_spread.py --seeds {' '.join(map(str, args.seeds))}` on {'; '.join(machines)} "
        f"(revision {', '.join(revisions)}), {sum(run['seconds'] for run in runs) / 60:.0f} min."
    )
    table = "\n".join(lines)
    (out_dir / "laq-upload-spread.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
