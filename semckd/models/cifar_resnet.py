"""CIFAR ResNets (He et al. 2016, the 6n+2 family) as used by SemCKD / CRD / RepDistiller.

Module names and parameter shapes match the authors' ``models/resnet.py`` so their released CIFAR-100
teacher checkpoints load with ``load_state_dict(strict=True)``. Two deliberate differences: global
pooling is adaptive (any input size works, e.g. 1×28×28 Fashion-MNIST), and the forward pass returns
logits only; intermediate features are read with :class:`semckd.FeatureTap`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["BasicBlock", "CifarResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1-conv) shortcut; the output is post-ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        # parameter-free marker: its output is the residual sum before the final ReLU (the authors'
        # ``preact`` feature, tapped by ReviewKD); it leaves the state_dict unchanged
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        # not in-place on the input: a feature tap may hold ``x`` (the previous stage's output)
        return F.relu(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    """Stem conv → three stages of ``n`` basic blocks (strides 1, 2, 2) → global pool → linear.

    ``depth = 6n + 2``; ``widths = [stem, stage1, stage2, stage3]`` channels.

    Stages follow the authors' ``is_feat`` list ``[f0, f1, f2, f3]``: the stem's ReLU output and the
    three stage outputs (post-ReLU). ``preact_stage_names`` are the authors' ``preact=True`` list: the
    stem, then each stage's last block before its final ReLU (its ``preact`` marker module).
    """

    def __init__(self, depth: int, widths: list[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()  # not in-place, so a tap on ``bn1`` still sees the pre-ReLU map
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        # the stem (the authors' is_feat f0) is declared apart from the stages; stage_names, the
        # default taps, start with it and methods that follow the authors' feat[1:] skip it
        self.stem_name: str = "relu"
        self.stage_names: list[str] = [self.stem_name, "layer1", "layer2", "layer3"]
        self.preact_stage_names: list[str] = ["relu"] + [f"layer{i}.{n - 1}.preact" for i in (1, 2, 3)]
        self.head_name: str = "fc"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            width = planes * BasicBlock.expansion
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SLIM = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]  # the "x4" variants: 4× the channels of the slim stages


def _factory(name: str, depth: int, widths: list[int]) -> None:
    def build(num_classes: int = 100, in_channels: int = 3, **kw) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes, in_channels=in_channels, **kw)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth} with stage widths {widths} (SemCKD/CRD model zoo)."
    register_model(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _factory(f"resnet{_depth}", _depth, _SLIM)
_factory("resnet8x4", 8, _WIDE)
_factory("resnet32x4", 32, _WIDE)
