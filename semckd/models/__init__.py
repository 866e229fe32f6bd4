"""Model zoo: CIFAR-style networks from the SemCKD paper and torchvision-compatible ImageNet ResNets."""

from .registry import create_model, list_models, register_model

# importing the zoo modules registers their models
from . import cifar_resnet, imagenet_resnet, mobilenetv2, shufflenet, vgg, wrn  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model"]
