"""Model zoo: CIFAR-style networks from the SemCKD paper and torchvision-compatible ImageNet ResNets."""

# importing the zoo modules registers their models
from . import cifar_resnet, imagenet_resnet, mobilenetv2, shufflenet, vgg, wrn  # noqa: F401, I001
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
