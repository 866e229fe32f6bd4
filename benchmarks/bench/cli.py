"""``python -m benchmarks bench``: images/s, memory and FLOP/s of one training step; ``--scaling`` for
SemCKD's cost as candidate layers and batch size grow, with a per-component breakdown."""

from __future__ import annotations

import argparse
import sys

from semckd.errors import UserError

from .config import PAIRS
from .scaling import format_scaling, run_scaling
from .table import format_table, run_bench, write_json

_DESCRIPTION = """\
Time one training step (teacher forward + student forward/backward + method losses + SGD step) for
vanilla, KD, SemCKD and the paper-faithful per-pair-loop SemCKD ("reference", fp32), by default at the
precision training uses by default on this hardware ("auto": bf16/fp16 autocast where native, else
fp32; marked "(default)") and in fp32, on random inputs. Prints a markdown table (ms/step, images/s,
memory, activations saved for backward, FLOPs, achieved FLOP/s, speedup of SemCKD over the reference
measured in the same run).

Memory: on CUDA, max_memory_allocated during the steps minus what the models took before ("step mem").
On CPU each configuration runs in a fresh process and "step mem" is the growth of its peak resident set
size (ru_maxrss) from after model construction to after the steps (gradients, optimizer state,
activations, allocator caches; ~±10 MB noise).

Peak FLOP/s: --peak-gflops if given, else an estimate measured with a large dense matmul (labelled est.).
"""


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks bench", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="cifar100,fmnist",
                   help="preset pairs: cifar100 (resnet8x4←resnet32x4, 3×32×32, 100 classes), "
                        "fmnist (resnet8←resnet20, 1×28×28, 10 classes)")
    p.add_argument("--student", help="custom pair: student architecture (replaces --pairs)")
    p.add_argument("--teacher", help="custom pair: teacher architecture")
    p.add_argument("--input-size", type=int, help="custom pair: image size (default 32)")
    p.add_argument("--in-channels", type=int, help="custom pair: input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="custom pair: classes (default 100)")
    p.add_argument("--methods", default="vanilla,kd,semckd,reference",
                   help="comma list of: vanilla, kd, semckd, reference (default: all)")
    p.add_argument("--amp", default="auto,fp32",
                   help="precisions: auto (what training uses by default here: bf16/fp16 where the hardware "
                        "runs it natively, else fp32; CPU bf16 with channels-last), fp32, fp32-cl (fp32, "
                        "channels-last networks), bf16, bf16-cl, fp16 (autocast) (default: auto,fp32)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, help="timed steps per repeat (default: 20 on GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default: 5 on GPU, 1 on CPU)")
    p.add_argument("--repeats", type=int,
                   help="timed repeats; the median is reported (default: 5 on GPU, 3 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-gflops", type=float, help="machine peak GFLOP/s for the '%% of peak' column")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting and the peak estimate")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (faster start; CPU memory numbers become unreliable)")
    p.add_argument("--json", metavar="FILE", help="also write all numbers to this JSON file")
    p.add_argument("--scaling", action="store_true",
                   help="SemCKD cost vs number of candidate layers and batch size, with a breakdown")
    p.add_argument("--scaling-batch-sizes", default="32,64,128,256", help="batch sizes for --scaling")
    p.add_argument("--layer-points", type=int, default=4, help="layer-count points for --scaling")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _pairs(args: argparse.Namespace) -> list[tuple[str, str, str, int, int, int]]:
    custom = any(v is not None for v in (args.student, args.teacher, args.input_size, args.in_channels,
                                         args.num_classes))
    if custom:
        if not (args.student and args.teacher):
            raise UserError("a custom pair needs both --student and --teacher (or use --pairs)")
        return [("custom", args.student, args.teacher, args.input_size or 32, args.in_channels or 3,
                 args.num_classes or 100)]
    out = []
    for name in _csv(args.pairs):
        if name not in PAIRS:
            raise UserError(f"unknown pair {name!r}; choose from {', '.join(PAIRS)} "
                            "or pass --student/--teacher")
        out.append((name, *PAIRS[name]))
    if not out:
        raise UserError("--pairs is empty; e.g. --pairs cifar100")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    pairs = _pairs(args)
    if args.scaling:
        label, student, teacher, size, chans, classes = pairs[0]
        try:
            sizes = [int(b) for b in _csv(args.scaling_batch_sizes)]
        except ValueError:
            raise UserError("--scaling-batch-sizes takes integers, e.g. 32,64,128,256") from None
        methods = [m for m in _csv(args.methods) if m in ("semckd", "reference")] or ["semckd"]
        precision = _csv(args.amp)[0] if _csv(args.amp) else "fp32"
        rep = run_scaling(student, teacher, size, chans, classes, batch_sizes=sizes, methods=methods,
                          precision=precision, device=args.device, steps=args.steps, warmup=args.warmup,
                          repeats=args.repeats, isolate=False if args.no_isolate else None,
                          layer_points=args.layer_points, base_batch=args.batch_size, threads=args.threads,
                          log=log)
        print(format_scaling(rep), end="")
    else:
        rep = run_bench(pairs, methods=_csv(args.methods), precisions=_csv(args.amp),
                        batch_size=args.batch_size, device=args.device, steps=args.steps,
                        warmup=args.warmup, repeats=args.repeats, isolate=False if args.no_isolate else None,
                        count_flops=not args.no_flops, peak_gflops=args.peak_gflops, threads=args.threads,
                        log=log)
        print(format_table(rep), end="")
    if args.json:
        write_json(args.json, rep)
    return 0
