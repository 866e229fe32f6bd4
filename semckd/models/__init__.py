"""Model zoo: CIFAR-style networks from the SemCKD paper and torchvision-compatible ImageNet ResNets."""

# importing the zoo modules registers their models
from . import cifar_resnet, imagenet_resnet, mobilenetv2, shufflenet, vgg, wrn  # noqa: F401, I001
from .registry import (ENTRY_POINT_GROUP, create_model, is_import_path, list_models, register_model,
                       resolve_model)

__all__ = ["ENTRY_POINT_GROUP", "create_model", "is_import_path", "list_models", "register_model",
           "resolve_model"]
