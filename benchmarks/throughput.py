"""Training-step throughput of the standard configurations, as JSON (+ the markdown table on stdout).

    python -m benchmarks throughput                         # both pairs, all methods, fp32 + bf16
    python -m benchmarks throughput --device cuda --out runs/bench/throughput_h100.json

A thin wrapper over :func:`benchmarks.bench.run_bench` (the same code as ``python -m benchmarks bench``):
resnet8x4 ← resnet32x4 on 3×32×32 / 100 classes (the paper's CIFAR-100 flagship pair) and resnet8 ←
resnet20 on Fashion-MNIST (1×28×28, 10 classes); vanilla, KD, SemCKD and the per-pair-loop reference
SemCKD; batch 64.
See ``python -m benchmarks bench --help`` for how time, memory and FLOP/s are measured.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/throughput.json", help="JSON output file")
    p.add_argument("--pairs", default="cifar100,fmnist", help=f"presets: {', '.join(bench.PAIRS)}")
    p.add_argument("--methods", default=",".join(bench.METHODS))
    p.add_argument("--amp", default="fp32,bf16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--peak-gflops", type=float)
    args = p.parse_args(argv)
    csv = [x.strip() for x in args.pairs.split(",") if x.strip()]
    unknown = [x for x in csv if x not in bench.PAIRS]
    if unknown:
        p.error(f"unknown pair {unknown[0]!r}; choose from {', '.join(bench.PAIRS)}")
    pairs = [(name, *bench.PAIRS[name]) for name in csv]
    rep = bench.run_bench(pairs, methods=args.methods.split(","), precisions=args.amp.split(","),
                          batch_size=args.batch_size, device=args.device, steps=args.steps,
                          warmup=args.warmup,
                          repeats=args.repeats, peak_gflops=args.peak_gflops,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    print(bench.format_table(rep), end="")
    bench.write_json(args.out, rep)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
