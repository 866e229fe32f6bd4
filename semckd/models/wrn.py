"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-d-k, as used by SemCKD / CRD / RepDistiller.

Pre-activation blocks (BN-ReLU-conv). Module names and shapes match the authors' ``models/wrn.py``
(``block1.layer.0.convShortcut`` etc.), so their released checkpoints load strictly. Global pooling is
adaptive and the forward pass returns logits only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["WideResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus shortcut; a 1×1 conv shortcut when the width changes.

    As in the original WRN code, when the width changes the shortcut is taken *after* the first
    BN-ReLU (both branches share the activated input).
    """

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = cin == cout
        self.convShortcut = (  # noqa: N815 - name kept for checkpoint compatibility
            None if self.equal_in_out else nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One WRN group: ``n`` blocks, the first one changes width/stride (kept as ``.layer`` for names)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        blocks = [WideBasicBlock(cin, cout, stride, drop_rate)]
        blocks += [WideBasicBlock(cout, cout, 1, drop_rate) for _ in range(1, n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv3×3 → three groups (strides 1, 2, 2) → BN-ReLU → global pool → linear. ``depth = 6n + 4``.

    Stages follow the authors' ``is_feat`` list ``[f0, f1, f2, f3]``: the stem conv and the three group
    outputs. The groups are pre-activation, so (as in the authors' code) ``block3`` is the map *before*
    the final BN-ReLU; the classifier sees ``avgpool(relu(bn1(block3)))``.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()  # not in-place, so a tap on ``block3``/``bn1`` keeps its values
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        # the stem (the authors' is_feat f0) is declared apart from the stages; stage_names, the
        # default taps, start with it and methods that follow the authors' feat[1:] skip it
        self.stem_name: str = "conv1"
        self.stage_names: list[str] = [self.stem_name, "block1", "block2", "block3"]
        # the authors' preact list (ReviewKD ``wide_resnet_cifar.py``): each group output through the next
        # BN (the next group's first ``bn1``, the final ``bn1``), i.e. normalised but before the ReLU
        self.preact_stage_names: list[str] = ["conv1", "block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
        self.head_name: str = "fc"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(depth: int, k: int) -> None:
    name = f"wrn_{depth}_{k}"

    def build(num_classes: int = 100, in_channels: int = 3, **kw) -> WideResNet:
        return WideResNet(depth, k, num_classes=num_classes, in_channels=in_channels, **kw)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{k} (SemCKD/CRD model zoo); ``drop_rate`` adds dropout inside blocks."
    register_model(name)(build)


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _factory(_d, _k)
