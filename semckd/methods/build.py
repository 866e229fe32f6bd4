"""``build_distiller``: a method spec (one method or ``a+b``) plus options → a ready Distiller.

Kept apart from the registry so the import graph stays a line — ``base`` ← ``registry`` ← ``combine``
← ``build`` — with no function-local import to break a cycle.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BuildContext, Distiller
from .combine import Combined
from .registry import check_options, get_method, method_names

__all__ = ["build_distiller"]


def build_distiller(spec: str, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext,
                    options: dict[str, Any] | None = None) -> Distiller:
    """Build ``spec`` (``"semckd"`` or a combination ``"semckd+crd"``) with validated options.

    For one method, ``options`` is a flat dict of its keyword options. For a combination it maps each
    method name to its own dict: ``{"semckd": {"beta": 400}, "crd": {"beta": 0.8}}``.
    """
    options = dict(options or {})
    names = method_names(spec)
    if not names:
        raise ValueError("empty method name; e.g. --method semckd")
    for n in names:
        get_method(n)
    if len(names) == 1:
        check_options(names[0], options)
        return get_method(names[0])(student, teacher, ctx, **options)
    for k in options:
        if k not in names:
            raise ValueError(f"options for a combination are keyed by method name "
                             f"({', '.join(names)}); got {k!r}")
    for n in names:
        check_options(n, options.get(n, {}))
    return Combined(student, teacher, ctx, methods=names, method_options=options)
