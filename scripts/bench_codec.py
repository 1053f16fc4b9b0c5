"""Throughput of the quantizer (eq. 5-6) and the wire codec for p = 159,010 (the MLP).

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
from laq_fl.quantizer import dequantize, quantize_innovation


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
    for bits in args.bits:
        quantization = quantize_innovation(grad, q_hat, bits)
        data = pack_levels(quantization.levels, bits)
        row = {
            "bits": bits,
            "quantize_ms": best_ms(lambda: quantize_innovation(grad, q_hat, bits)),
            "dequantize_ms": best_ms(lambda: dequantize(q_hat, quantization.levels, quantization.radius, bits)),
            "pack_ms": best_ms(lambda: pack_levels(quantization.levels, bits)),
            "unpack_ms": best_ms(lambda: unpack_levels(data, bits, args.size)),
            "payload_bytes": len(data) + 4,
        }
        rows.append(row)
    if args.json:
        print(json.dumps({"size": args.size, "machine": machine(), "rows": rows}, indent=2))
        return
    print(f"p = {args.size:,}; {machine()}")
    print("| bits | quantize ms | dequantize ms | pack ms | unpack ms | pack Mcoord/s | unpack Mcoord/s | payload bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['bits']} | {row['quantize_ms']:.2f} | {row['dequantize_ms']:.2f} | {row['pack_ms']:.3f} | {row['unpack_ms']:.3f} | "
              f"{args.size / row['pack_ms'] / 1e3:.0f} | {args.size / row['unpack_ms'] / 1e3:.0f} | {row['payload_bytes']:,} |")


if __name__ == "__main__":
    main()
