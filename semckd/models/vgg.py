"""VGG with batch norm for small images (CIFAR variant without the big FC layers), as in SemCKD / CRD.

Five conv blocks separated by 2×2 max-pools, global average pooling and one linear layer. Module names
and shapes match the authors' ``models/vgg.py`` (``block0.0.weight``, ``classifier.weight``) so their
checkpoints load strictly. The registered ``vggN`` names are the batch-norm variants (the authors'
``vggN_bn``), which is what their model dictionary maps ``vggN`` to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["VGG"]

_CFG: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: list[int], cin: int, batch_norm: bool) -> nn.Sequential:
    """conv-BN-ReLU repeated, *without* the final ReLU (it is a separate module, see ``VGG``)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Conv2d(cin, w, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU(inplace=True))
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """``block_i`` → ``act_i`` (ReLU) → ``pool_i`` for i = 0..3, then ``block4`` → ``act4`` → global pool.

    Stages are the authors' ``is_feat`` list ``[f0, ..., f4]``: the post-ReLU output of every block
    (``act0``..``act4``). Each block ends at its last BN so that the authors' ``preact`` features
    (``block_i`` outputs) are also module outputs, should a method want them.

    Max-pools use ``ceil_mode=True`` so odd sizes keep their border (28×28 → 14 → 7 → 4); on even sizes
    (CIFAR) this is identical to the authors' floor pooling. ``pool3`` runs only when the map entering it
    is at least 8 pixels wide, which reproduces the authors' rule (pool only for 64×64 inputs; 32×32
    CIFAR keeps a 4×4 map in ``block4``) without naming an input size.
    """

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3,
                 batch_norm: bool = True) -> None:
        super().__init__()
        cins = [in_channels] + [c[-1] for c in cfg[:-1]]
        for i, (widths, cin) in enumerate(zip(cfg, cins, strict=True)):
            self.add_module(f"block{i}", _block(widths, cin, batch_norm))
            self.add_module(f"act{i}", nn.ReLU())  # not in-place: keeps a tapped block_i intact
            if i < 4:
                self.add_module(f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        self.stem_name: str = "act0"  # the stem, declared apart from the stages (skipped by feat[1:] methods)
        self.stage_names: list[str] = [self.stem_name] + [f"act{i}" for i in range(1, 5)]
        # the authors' preact list (mdistiller ``preact_feats``): f0 post-ReLU, then the block outputs
        self.preact_stage_names: list[str] = ["act0"] + [f"block{i}" for i in range(1, 5)]
        self.head_name: str = "classifier"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.act0(self.block0(x)))
        x = self.pool1(self.act1(self.block1(x)))
        x = self.pool2(self.act2(self.block2(x)))
        x = self.act3(self.block3(x))
        if x.shape[-1] >= 8:
            x = self.pool3(x)
        x = self.act4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _factory(name: str) -> None:
    cfg = _CFG[name]

    def build(num_classes: int = 100, in_channels: int = 3, **kw) -> VGG:
        return VGG(cfg, num_classes=num_classes, in_channels=in_channels, **kw)

    build.__name__ = name
    build.__doc__ = f"{name.upper()} with batch norm, CIFAR variant (SemCKD/CRD model zoo)."
    register_model(name)(build)


for _name in _CFG:
    _factory(_name)
