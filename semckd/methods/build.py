"""``build_distiller``: a method spec (one method or ``a+b``) plus options → a ready Distiller.

Kept apart from the registry so the import graph stays a line — ``base`` ← ``registry`` ← ``combine``
← ``build`` — with no function-local import to break a cycle.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BuildContext, Distiller
from .combine import Combined
from .registry import check_options, get_method, method_names, needs_full_batches

__all__ = ["build_distiller"]


def build_distiller(spec: str, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext,
                    options: dict[str, Any] | None = None) -> Distiller:
    """Build ``spec`` (``"semckd"`` or a combination ``"semckd+crd"``) with validated options.

    For one method, ``options`` is a flat dict of its keyword options. For a combination it maps each
    method name to its own dict: ``{"semckd": {"beta": 400}, "crd": {"beta": 0.8}}``. The options are
    checked by :func:`~semckd.methods.registry.check_options` (the one check config load also runs),
    and ``fixed_batch_size`` is set here from the method's declaration
    (:meth:`~semckd.methods.base.Distiller.needs_full_batches`): ``ctx.batch_size`` or None.
    """
    options = check_options(spec, options)
    names = method_names(spec)
    if len(names) == 1:
        d = get_method(names[0])(student, teacher, ctx, **options)
    else:
        d = Combined(student, teacher, ctx, methods=names, method_options=options)
    d._fixed_batch_size = ctx.batch_size if needs_full_batches(spec, options) else None
    return d
