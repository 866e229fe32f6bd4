"""MobileNetV2 (Sandler et al. 2018), CIFAR variant from "Knowledge Distillation via Route Constrained
Optimization" as used by SemCKD / CRD.

The paper's "MobileNetV2" student is the authors' ``mobile_half``: width multiplier 0.5 and expansion
T = 6 (registered here as ``mobilenetv2``). The stem has stride 2, so a 32×32 input ends at 2×2.
Module names and shapes match the authors' ``models/mobilenetv2.py`` (``blocks.3.0.conv.4.weight``,
``classifier.0.weight``) so their checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["MobileNetV2"]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """``conv1`` → seven groups of inverted residuals (``blocks``) → 1×1 ``conv2`` to 1280 → pool → linear.

    Stages are the authors' ``is_feat`` list ``[f0, ..., f4]`` = ``conv1``, ``blocks.1``, ``blocks.2``,
    ``blocks.4``, ``blocks.6`` (one per resolution, the last at 160·w channels). As in the authors' code
    the last stage is *not* the map that is pooled: ``conv2`` (1×1 conv to 1280 channels + BN-ReLU)
    follows it, and the classifier sees ``avgpool(conv2(blocks.6))``.

    The classifier is ``nn.Sequential(nn.Linear)`` as in the authors' code (checkpoint keys
    ``classifier.0.*``), so ``head_name`` is ``"classifier.0"``.
    """

    # t (expansion; None = the model's T), c (channels before width multiplier), n (blocks), s (stride)
    SETTING: tuple[tuple[int | None, int, int, int], ...] = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, expansion if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        # the stem (the authors' is_feat f0) is declared apart from the stages; stage_names, the
        # default taps, start with it and methods that follow the authors' feat[1:] skip it
        self.stem_name: str = "conv1"
        self.stage_names: list[str] = [self.stem_name, "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        self.head_name: str = "classifier.0"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, **kw) -> MobileNetV2:
    """The paper's MobileNetV2 student: the authors' ``mobile_half`` (width 0.5, expansion T = 6)."""
    kw.setdefault("expansion", 6)
    kw.setdefault("width_mult", 0.5)
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kw)
