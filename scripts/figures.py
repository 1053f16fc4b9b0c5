"""Figures like the paper's 4-8 from the results files of scripts/table2.py (and table3.py), and the bytes figures
of scripts/bytes_table.py (loss residual against total bytes on the wire, both directions).

    python scripts/figures.py            # writes docs/*.png from results/

Loss residual f(theta^k)/M - f*/M (log scale) against iterations, cumulative uploads and cumulative
payload bits, one curve per algorithm; test accuracy against cumulative bits. For the neural network,
where f* is unknown, the training loss itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from experiments import DEFAULT_OUT_DIR, REPO_ROOT  # noqa: E402

from laq_fl.results import read_results

STYLE = {"gd": ("GD", "tab:blue"), "qgd": ("QGD", "tab:orange"), "lag": ("LAG", "tab:green"), "laq": ("LAQ", "tab:red"),
         "sgd": ("SGD", "tab:blue"), "qsgd": ("QSGD", "tab:orange"), "ssgd": ("SSGD", "tab:purple"),
         "slaq": ("SLAQ (7a as printed)", "tab:gray"), "slaq-wk2": ("SLAQ-WK2", "tab:red"), "lasg": ("LASG", "tab:green"),
         "ef-signsgd": ("EF-SignSGD", "tab:brown"), "terngrad": ("TernGrad", "tab:olive"), "dgc": ("DGC (top 1%)", "tab:cyan")}


def load_rows(results_dir: Path, results_file: str) -> list[dict]:
    return read_results(results_dir / results_file)[0]


def curves(summary: dict, results_dir: Path) -> dict[str, dict[str, list[float]]]:
    """Per algorithm: iteration k, cumulative uploads and bits before theta^k, loss (or residual) at theta^k, accuracy."""
    f_star = summary.get("f_star")
    out = {}
    for row in summary["rows"]:
        rows = load_rows(results_dir, row["results_file"])
        # Row r reports f(theta^{r-1}) and the uploads of iteration r-1; so theta^k pairs with row k+1's
        # loss and with the cumulative counts of row k.
        ks = list(range(len(rows) - 1))
        loss = [rows[k + 1]["train-loss"] for k in ks]
        out[row["algorithm"]] = {
            "iteration": ks,
            "uploads": [rows[k]["uploads-cum"] if k else 0 for k in ks],
            "bits": [rows[k]["payload-bits-cum"] if k else 0 for k in ks],
            "loss": [value - f_star for value in loss] if f_star is not None else loss,
            "accuracy": [rows[k]["test-accuracy"] for k in ks],
        }
    return out


def plot_table(summary: dict, results_dir: Path, docs: Path, name: str) -> list[Path]:
    data = curves(summary, results_dir)
    if summary.get("f_star") is not None:
        ylabel = "loss residual f(θᵏ)/M − f*/M"
    elif name.startswith("table3"):
        ylabel = "training loss on the minibatches"
    else:
        ylabel = "training loss f(θᵏ)/M"
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for axis, (key, xlabel) in zip(axes, [("iteration", "iteration k"), ("uploads", "cumulative uploads"), ("bits", "cumulative payload bits")]):
        for algorithm, series in data.items():
            label, color = STYLE[algorithm]
            x, y = series[key], series["loss"]
            if key != "iteration":  # theta^0 comes before any upload: a log axis cannot show x = 0
                x, y = x[1:], y[1:]
            axis.plot(x, y, label=label, color=color, linewidth=1.4)
        axis.set_yscale("log")
        if key != "iteration":
            axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{summary['model']} on MNIST, M = 10 — `{summary['command']}`", fontsize=10)
    loss_path = docs / f"{name}-loss.png"
    figure.savefig(loss_path, dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for algorithm, series in data.items():
        label, color = STYLE[algorithm]
        axis.plot(series["bits"][1:], series["accuracy"][1:], label=label, color=color, linewidth=1.4)
    axis.set_xscale("log")
    axis.set_xlabel("cumulative payload bits")
    axis.set_ylabel("test accuracy")
    low = min(min(series["accuracy"][len(series["accuracy"]) // 10 :]) for series in data.values())
    axis.set_ylim(max(low - 0.02, 0), None)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    axis.set_title(f"{summary['model']}: test accuracy against bits", fontsize=10)
    accuracy_path = docs / f"{name}-accuracy.png"
    figure.savefig(accuracy_path, dpi=110)
    plt.close(figure)
    return [loss_path, accuracy_path]


def plot_bytes(summary: dict, results_dir: Path, docs: Path, name: str) -> list[Path]:
    """Loss residual against total measured bytes (up + down), one curve per variant of scripts/bytes_table.py."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for index, row in enumerate(summary["rows"]):
        stem = f"bytes-{summary['setting']}-{row['variant'].replace(' ', '-').replace('=', '')}"
        rows = [r for r in load_rows(results_dir, f"runs/{stem}.jsonl")[1:] if r["residual"] is not None]  # evaluated rounds
        total = [r["total-bytes-cum"] for r in rows]
        style = "--" if "two-way" in row["variant"] else "-"
        axes[0].plot(total, [max(r["residual"], 1e-12) for r in rows], style, color=colors(index), label=row["variant"].upper(), linewidth=1.3)
        axes[1].plot(total, [r["test-accuracy"] for r in rows], style, color=colors(index), label=row["variant"].upper(), linewidth=1.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss residual f(model)/M − f*/M")
    axes[1].set_ylabel("test accuracy")
    low = min(row["test_accuracy"] for row in summary["rows"])
    axes[1].set_ylim(max(low - 0.03, 0), None)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("total bytes on the wire (uplink + downlink, measured)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"logistic regression on MNIST, M = 10 — `{summary['command']}` at {summary['revision']}", fontsize=10)
    path = docs / f"{name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs")
    args = parser.parse_args()
    args.docs.mkdir(parents=True, exist_ok=True)
    for summary_file in sorted(args.results_dir.glob("table*.json")):
        summary = json.loads(summary_file.read_text())
        for path in plot_table(summary, args.results_dir, args.docs, summary_file.stem):
            print(path)
    for summary_file in sorted(args.results_dir.glob("bytes-*.json")):
        summary = json.loads(summary_file.read_text())
        for path in plot_bytes(summary, args.results_dir, args.docs, summary_file.stem):
            print(path)


if __name__ == "__main__":
    main()
