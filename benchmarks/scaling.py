"""How SemCKD's step cost grows with the number of candidate layers and with the batch size, and where
the time goes (teacher forward / student forward+backward / criterion: attention vs projectors vs MSE).

    python -m benchmarks scaling                              # resnet8x4 ← resnet32x4, fp32
    python -m benchmarks scaling --device cuda --precision bf16 --out runs/bench/scaling_bf16.json

A thin wrapper over :func:`benchmarks.bench.run_scaling` (also ``python -m benchmarks bench
--scaling``). Candidate layers go from the declared stages to every residual block of both networks
(stage outputs always kept); batch sizes 32, 64, 128, 256 at the declared stages. Writes JSON and prints
markdown.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/scaling.json", help="JSON output file")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--batch-sizes", default="32,64,128,256")
    p.add_argument("--base-batch", type=int, default=64, help="batch size of the layer sweep")
    p.add_argument("--methods", default="semckd,reference", help="semckd and/or reference")
    p.add_argument("--precision", default="fp32", choices=bench.PRECISIONS)
    p.add_argument("--layer-points", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    args = p.parse_args(argv)
    rep = bench.run_scaling(args.student, args.teacher, args.input_size, args.in_channels, args.num_classes,
                            batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
                            methods=[m for m in args.methods.split(",") if m.strip()],
                            precision=args.precision,
                            device=args.device, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                            layer_points=args.layer_points, base_batch=args.base_batch,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    print(bench.format_scaling(rep), end="")
    bench.write_json(args.out, rep)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
