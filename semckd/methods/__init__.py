"""Distillation methods. Each module registers its Distiller subclass(es) on import."""

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

import importlib as _importlib

# one module per method; a module that is missing (work in progress) must not break the rest
for _mod in ("kd", "semckd", "fitnet", "at", "sp", "vid", "hkd", "crd", "pkt", "rkd", "cc", "irg",
             "simkd", "dkd", "reviewkd"):
    try:
        _importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a method is being written
        if _e.name != f"{__name__}.{_mod}":
            raise

__all__ = ["BuildContext", "Distiller", "Outputs", "build_distiller", "get_method", "kd_loss",
           "list_methods", "method_options", "register_method"]
