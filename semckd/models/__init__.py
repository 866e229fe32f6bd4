"""Model zoo: CIFAR-style networks from the SemCKD paper and torchvision-compatible ImageNet ResNets."""

import importlib as _importlib

from .registry import create_model, list_models, register_model

# importing the zoo modules registers their models
for _mod in ("cifar_resnet", "wrn", "vgg", "mobilenetv2", "shufflenet", "imagenet_resnet"):
    try:
        _importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while the zoo is being written
        if _e.name != f"{__name__}.{_mod}":
            raise

__all__ = ["create_model", "list_models", "register_model"]
