"""Distillation methods. Each module registers its Distiller subclass(es) on import.

Adding a method touches one file: a ``Distiller`` subclass decorated with ``@register_method`` in a new
module, listed in the import below (or imported by the user's own code before ``build_distiller``).
"""

from . import (  # noqa: F401
    at,
    cc,
    crd,
    dkd,
    fitnet,
    hkd,
    irg,
    kd,
    pkt,
    reviewkd,
    rkd,
    semckd,
    simkd,
    sp,
    vid,
)
from .base import BuildContext, Distiller, Outputs, kd_loss
from .build import build_distiller
from .registry import get_method, list_methods, method_options, register_method

__all__ = ["BuildContext", "Distiller", "Outputs", "build_distiller", "get_method", "kd_loss",
           "list_methods", "method_options", "register_method"]
