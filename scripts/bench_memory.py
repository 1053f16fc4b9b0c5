"""Peak memory of the LAQ server state with many clients.

    python scripts/bench_memory.py --clients 100 1000

The server keeps one float32 copy Q_hat_m of p values per client plus the float64 aggregate
and theta, so it grows by 4 p bytes per client. Measured with tracemalloc (numpy reports its
buffers to it) while every client uploads once and the server steps.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from experiments import machine
from laq_fl.compressors import Grid
from laq_fl.config import AlgorithmConfig
from laq_fl.server_state import ServerState

SIZES = {"logistic": 7_850, "mlp": 159_010}


def peak_bytes(clients: int, size: int, bits: int) -> int:
    rng = np.random.default_rng(0)
    grad = rng.normal(size=size).astype(np.float32)
    payload = Grid(bits=bits).compress(grad).payload
    tracemalloc.start()
    tracemalloc.reset_peak()
    server = ServerState(np.zeros(size, np.float32), AlgorithmConfig(algorithm="laq", bits=bits), clients)
    for client in range(clients):
        server.accept(client, payload)
    server.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--models", nargs="+", default=list(SIZES))
    args = parser.parse_args()
    print(machine())
    print("| model | p | clients | peak MB | predicted 4p(N+3)+8p MB | bytes per client |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in args.models:
        size = SIZES[model]
        for clients in args.clients:
            peak = peak_bytes(clients, size, bits=8)
            predicted = 4 * size * (clients + 3) + 8 * size
            print(f"| {model} | {size:,} | {clients:,} | {peak / 2**20:.1f} | {predicted / 2**20:.1f} | {peak / clients:,.0f} |")


if __name__ == "__main__":
    main()
