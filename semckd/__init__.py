"""semckd: knowledge distillation with SemCKD (Chen et al., AAAI 2021) and the methods it is compared to.

Public API::

    from semckd import SemCKD, FeatureTap, discover_stages, model_layout, create_model, list_models
    from semckd import build_distiller, list_methods, Distiller
    from semckd import train, register_dataset, list_datasets      # a user's own data (README)

Attributes are imported lazily so ``semckd --help`` and light submodules load fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SemCKD": "semckd.criterion",
    "FeatureTap": "semckd.features",
    "discover_stages": "semckd.features",
    "discover_head": "semckd.features",
    "model_layout": "semckd.features",
    "create_model": "semckd.models",
    "list_models": "semckd.models",
    "register_model": "semckd.models",
    "Distiller": "semckd.methods",
    "build_distiller": "semckd.methods",
    "list_methods": "semckd.methods",
    "register_method": "semckd.methods",
    "register_dataset": "semckd.data",
    "list_datasets": "semckd.data",
    "train": "semckd.api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'semckd' has no attribute {name!r}")
