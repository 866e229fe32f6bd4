"""Shared command-line flags for the training commands: one flag per :class:`TrainConfig` field.

Flags are generated from the dataclass so the CLI, the YAML files and ``--set`` can never drift apart.
Every flag defaults to "not given" (``argparse.SUPPRESS``): only what the user typed overrides the
YAML file, and only what the user set counts as explicit (e.g. for the automatic MobileNet lr).
Values are parsed by :mod:`semckd.config`, so a bad value is one ``semckd: error:`` line, not an
argparse usage dump.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from ..config import TrainConfig, config_fields, parse_key_values, resolve_config

__all__ = ["add_config_arguments", "config_from_args", "run_training"]

# keys that make no sense for train-teacher (it always trains method 'vanilla' without a teacher)
_TEACHER_HIDDEN = {"teacher", "teacher_model", "method"}


def _metavar(name: str, tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "N"
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return {int: "N", float: "X", str: name.upper()}.get(base[0], "VALUE")


def add_config_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """Add ``--config``, ``--set`` and a flag for every config key to ``parser``."""
    parser.add_argument("-c", "--config", metavar="FILE.yaml", default=None,
                        help="YAML file of config keys (command-line flags override it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set method_args.beta=400 (repeatable)")
    group = parser.add_argument_group("config keys (also settable in --config YAML or with --set KEY=VALUE)")
    hints = typing.get_type_hints(TrainConfig)
    for name, f in config_fields().items():
        if not f.metadata.get("cli", True) or (kind == "teacher" and name in _TEACHER_HIDDEN):
            continue
        flag = "--" + name.replace("_", "-")
        tp = hints[name]
        default = f.default if f.default is not f.default_factory else None  # type: ignore[comparison-overlap]
        help_text = f.metadata.get("help", "")
        if tp is bool or tp == (bool | None):
            shown = "auto" if f.default is None else f.default
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})")
        elif name == "method_args":
            group.add_argument(flag, dest=name, nargs="+", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                               help=help_text)
        elif typing.get_origin(tp) is list:
            shown = " ".join(map(str, f.default_factory()))  # type: ignore[misc]
            group.add_argument(flag, dest=name, nargs="*", metavar=_metavar(name, tp),
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})")
        else:
            shown = "" if default in (None, "") else f" (default: {default})"
            group.add_argument(flag, dest=name, metavar=_metavar(name, tp), default=argparse.SUPPRESS,
                               help=help_text + shown)


def config_from_args(args: argparse.Namespace, kind: str) -> TrainConfig:
    """Resolve the layered config (defaults, resumed run, YAML, flags, --set) from parsed arguments."""
    flags: dict[str, Any] = {}
    for name in config_fields():
        if hasattr(args, name):
            value = getattr(args, name)
            if name == "method_args":
                value = parse_key_values(value, "--method-args")
            elif isinstance(value, list):
                value = " ".join(value)
            flags[name] = value
    cfg, _ = resolve_config(kind, config_file=args.config, flags=flags, sets=args.set)
    return cfg


def run_training(args: argparse.Namespace, kind: str) -> int:
    from ..engine import train

    train(config_from_args(args, kind))
    return 0
