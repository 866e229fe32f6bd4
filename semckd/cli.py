"""Command-line entry point: ``semckd <command> ...``.

Each command lives in ``semckd/commands/<name>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func``. Bad input (``UserError``, ``ValueError``, missing files) becomes one line
on stderr and exit code 2, never a traceback; ``SEMCKD_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError

COMMANDS = ["train_teacher", "distill", "sweep", "eval", "plot", "report", "export", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semckd", description="Knowledge distillation with SemCKD.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"semckd.commands.{name}")
        except ModuleNotFoundError as e:  # a command still being written must not break the others
            if e.name == f"semckd.commands.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("semckd: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        if os.environ.get("SEMCKD_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"semckd: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
