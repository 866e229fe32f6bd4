"""``python -m benchmarks <job> [options]``: the one entry to the measurement code, run from the checkout
root (``-m`` puts the current folder first on the import path, so the checkout's own ``semckd`` and
``benchmarks`` are the ones measured; nothing edits ``sys.path``).

``python -m benchmarks`` lists the jobs; ``python -m benchmarks <job> --help`` shows a job's options.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path

# job → (module, one line); each module has ``main(argv) -> int | None``
JOBS: dict[str, tuple[str, str]] = {
    "bench": ("benchmarks.bench.cli", "one training step: ms, images/s, memory, FLOP/s (and --scaling)"),
    "throughput": ("benchmarks.throughput", "the standard step-throughput table as JSON"),
    "scaling": ("benchmarks.scaling", "SemCKD's step cost vs candidate layers and batch size"),
    "reference": ("benchmarks.reference", "SemCKD criterion alone: the per-pair reference vs the library"),
    "epoch": ("benchmarks.epoch", "whole epochs (data + step): DataLoader+PIL+reference vs the defaults"),
    "data_pipeline": ("benchmarks.data_pipeline", "data side only: on-device augmentation vs PIL"),
    "own_data": ("benchmarks.own_data", "a user's data four ways (tensors, PIL, CSV) vs the IDX loader"),
    "protocol": ("benchmarks.protocol", "the equal-budget Fashion-MNIST tables (benchmarks/results/)"),
    "prune_study": ("benchmarks.prune_study", "what sweep --prune saves on the protocol's grids, same pick?"),
    "accuracy_table": ("benchmarks.accuracy_table", "the Fashion-MNIST accuracy table through the CLI"),
    "make_recipes": ("benchmarks.make_recipes", "write configs/{cifar100,imagenet}/** and docs/recipes.md"),
    "bitcheck": ("benchmarks.bitcheck", "do two commits train bit for bit alike (demo, fp32, bf16, kill -9)"),
    "gpu_check": ("benchmarks.gpu_check", "the prepared under-8-minute GPU check"),
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: python -m benchmarks <job> [options]   (from the checkout root)", "", "jobs:"]
    lines += [f"  {name:<{width}}  {line}" for name, (_, line) in JOBS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        close = difflib.get_close_matches(job, JOBS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(f"benchmarks: error: unknown job {job!r}; {hint}choose from {', '.join(JOBS)}",
              file=sys.stderr)
        return 2
    import benchmarks
    import semckd

    here, lib = Path(benchmarks.__file__).resolve().parents[1], Path(semckd.__file__).resolve().parents[1]
    if here != lib:  # measuring one checkout's code while reporting another's commit
        print(f"benchmarks: error: benchmarks/ is from {here} but semckd from {lib}; run "
              f"`python -m benchmarks` from the checkout root, or set PYTHONPATH={here}", file=sys.stderr)
        return 2
    from semckd.errors import UserError

    mod = importlib.import_module(JOBS[job][0])
    sys.argv[0] = f"python -m benchmarks {job}"  # the jobs' argparse usage lines name this command
    try:
        rc = mod.main(rest)
    except KeyboardInterrupt:
        print(f"benchmarks {job}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("SEMCKD_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"benchmarks {job}: error: {msg}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
