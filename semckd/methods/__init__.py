"""Distillation methods. Each module registers its Distiller subclass(es) on import."""

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
from .base import (
    BuildContext,
    Distiller,
    Outputs,
    build_distiller,
    get_method,
    kd_loss,
    list_methods,
    method_options,
    register_method,
)

__all__ = ["BuildContext", "Distiller", "Outputs", "build_distiller", "get_method", "kd_loss",
           "list_methods", "method_options", "register_method"]
