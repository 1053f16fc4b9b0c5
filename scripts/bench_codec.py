"""Throughput of LAQ's grid quantizer (eq. 5-6), its decoding, and the bit packing for p = 159,010 (the MLP).

    python scripts/bench_codec.py

Best of several repeats; prints milliseconds per call and million coordinates per second.
"""

from __future__ import annotations

import argparse
import json
import timeit

import numpy as np

from experiments import machine
from laq_fl.codec import pack_levels, unpack_levels
from laq_fl.compressors import Grid


def best_ms(call, number: int = 20, repeat: int = 5) -> float:
    return 1e3 * min(timeit.repeat(call, number=number, repeat=repeat)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=159_010)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 3, 4, 8, 16])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    grad = rng.normal(size=args.size).astype(np.float32)
    q_hat = (grad + 0.1 * rng.normal(size=args.size)).astype(np.float32)
    rows = []
    innovation = grad.astype(np.float64) - q_hat
    for bits in args.bits:
        grid = Grid(bits=bits)
        payload = grid.compress(innovation).payload
        data = payload[4:]
        levels = unpack_levels(data, bits, args.size)
        row = {
            "bits": bits,
            "quantize_ms": best_ms(lambda: grid.compress(innovation)),  # quantize and pack
            "dequantize_ms": best_ms(lambda: grid.decompress(payload, args.size)),  # unpack and dequantize
            "pack_ms": best_ms(lambda: pack_levels(levels, bits)),
            "unpack_ms": best_ms(lambda: unpack_levels(data, bits, args.size)),
            "payload_bytes": len(payload),
        }
        rows.append(row)
    if args.json:
        print(json.dumps({"size": args.size, "machine": machine(), "rows": rows}, indent=2))
        return
    print(f"p = {args.size:,}; {machine()}")
    print("| bits | compress ms | decompress ms | pack ms | unpack ms | pack Mcoord/s | unpack Mcoord/s | payload bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['bits']} | {row['quantize_ms']:.2f} | {row['dequantize_ms']:.2f} | {row['pack_ms']:.3f} | {row['unpack_ms']:.3f} | "
              f"{args.size / row['pack_ms'] / 1e3:.0f} | {args.size / row['unpack_ms'] / 1e3:.0f} | {row['payload_bytes']:,} |")


if __name__ == "__main__":
    main()
