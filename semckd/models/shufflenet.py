"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018), CIFAR variants as used by SemCKD / CRD.

Both use a 1×1 stride-1 stem (no early down-sampling on 32×32 inputs) and three down-sampling stages.
Module names and shapes match the authors' ``models/ShuffleNetv1.py`` / ``ShuffleNetv2.py``
(``layer1.0.conv1.weight``, ``linear.weight``) so their checkpoints load strictly. Channel shuffles are
parameter-free functions here. Global pooling is adaptive; the forward pass returns logits only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, C, H, W] → [N, g, C/g, H, W] → transpose the group axes → [N, C, H, W]."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---------------------------------------------------------------------------------------- ShuffleNet V1
class ShuffleV1Unit(nn.Module):
    """Grouped 1×1 → shuffle → 3×3 depthwise → grouped 1×1; stride 2 concatenates an avg-pooled input.

    ``first_group`` is the grouping of the first 1×1 conv: the authors use 1 for the very first unit
    (its 24-channel input is too narrow to split) and ``groups`` elsewhere. Like the authors' code (and
    unlike the ShuffleNet paper) a ReLU follows the depthwise conv as well.
    """

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_group: int) -> None:
        super().__init__()
        mid = cout // 4
        self.stride = stride
        self.first_group = first_group
        self.conv1 = nn.Conv2d(cin, mid, kernel_size=1, groups=first_group, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        pool = [nn.AvgPool2d(3, stride=2, padding=1)] if stride == 2 else []
        self.shortcut = nn.Sequential(*pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_group)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """1×1 stem (24 ch) → three stages (first unit stride 2) → global pool → linear.

    Stages are the authors' ``is_feat`` list ``[f0, f1, f2, f3]``: the stem's ReLU output and the three
    stage outputs (post-ReLU; the authors' ``preact`` variant is not a module output).
    """

    def __init__(self, out_planes: tuple[int, int, int] = (240, 480, 960),
                 num_blocks: tuple[int, int, int] = (4, 8, 4), groups: int = 3, num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        cin = stem
        for i, (cout, n) in enumerate(zip(out_planes, num_blocks, strict=True)):
            units = []
            for j in range(n):
                # the stride-2 unit concatenates its pooled input, so its conv branch makes cout - cin
                units.append(ShuffleV1Unit(cin, cout - cin if j == 0 else cout, 2 if j == 0 else 1, groups,
                                           1 if cin == stem else groups))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[-1], num_classes)
        # the stem (the authors' is_feat f0) is declared apart from the stages; stage_names, the
        # default taps, start with it and methods that follow the authors' feat[1:] skip it
        self.stem_name: str = "relu"
        self.stage_names: list[str] = [self.stem_name, "layer1", "layer2", "layer3"]
        self.head_name: str = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3, **kw) -> ShuffleNetV1:
    """The paper's ShuffleNetV1 student (authors' ``ShuffleV1``: groups 3, widths 240/480/960)."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels, **kw)


# ---------------------------------------------------------------------------------------- ShuffleNet V2
class ShuffleV2Unit(nn.Module):
    """Stride-1 unit: split channels in half, transform one half (1×1 → 3×3 dw → 1×1), concat, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1] * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input and down-sample; concat doubles the channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        # left branch: 3×3 dw (stride 2) → 1×1
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1×1 → 3×3 dw (stride 2) → 1×1
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1×1 stem (24 ch) → three stages (a down unit + n units) → 1×1 ``conv2`` + BN-ReLU → pool → linear.

    Stages are the authors' ``is_feat`` list ``[f0, f1, f2, f3]``: the stem's ReLU output and the three
    stage outputs. As in the authors' code the last stage (``layer3``, 464 ch) is *not* the pooled map:
    the classifier sees ``avgpool(relu(bn2(conv2(layer3))))`` (1024 ch).
    """

    def __init__(self, out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
                 num_blocks: tuple[int, int, int] = (3, 7, 3), num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        cin = stem
        for i, (cout, n) in enumerate(zip(out_channels[:3], num_blocks, strict=True)):
            units: list[nn.Module] = [ShuffleV2DownUnit(cin, cout)]
            units += [ShuffleV2Unit(cout) for _ in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            cin = cout
        self.conv2 = nn.Conv2d(cin, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)
        # the stem (the authors' is_feat f0) is declared apart from the stages; stage_names, the
        # default taps, start with it and methods that follow the authors' feat[1:] skip it
        self.stem_name: str = "relu"
        self.stage_names: list[str] = [self.stem_name, "layer1", "layer2", "layer3"]
        self.head_name: str = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3, **kw) -> ShuffleNetV2:
    """The paper's ShuffleNetV2 student (authors' ``ShuffleV2``, net size 1: widths 116/232/464/1024)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, **kw)
