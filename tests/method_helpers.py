"""Tiny student/teacher pairs shared by the method tests.

``make_pair``: two small nets declaring the zoo's attributes (a stem and three stages, ``stem_name``,
``stage_names``, ``head_name``) on 8×8 one-channel inputs; ``zoo_pair``: real zoo models on 16×16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semckd.methods import BuildContext, Distiller, Outputs
from semckd.models import create_model

B, C_IN, HW, NCLS, NSAMP = 8, 1, 16, 10, 40


class Tiny(nn.Module):
    """stem → three stages (the last two stride 2) → pool → fc, declaring the zoo's attributes."""

    def __init__(self, widths: tuple[int, int, int, int], num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = block(in_channels, widths[0], 1)
        self.layer1 = block(widths[0], widths[1], 1)
        self.layer2 = block(widths[1], widths[2], 2)
        self.layer3 = block(widths[2], widths[3], 2)
        self.fc = nn.Linear(widths[3], num_classes)
        self.stem_name = "stem"
        self.stage_names = ["stem", "layer1", "layer2", "layer3"]
        self.head_name = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_pair(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, BuildContext]:
    torch.manual_seed(seed)
    student = Tiny((4, 4, 8, 8))
    teacher = Tiny((8, 8, 16, 12)).eval()
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 5, (8,))
    return student, teacher, x, y, BuildContext(x, batch_size=8, num_classes=5, num_samples=8)


def outputs(logits: torch.Tensor, feats: list[torch.Tensor], emb: torch.Tensor) -> Outputs:
    return Outputs(logits, feats, emb)



def zoo_pair(student: str = "resnet8", teacher: str = "resnet14", seed: int = 0):
    torch.manual_seed(seed)
    s = create_model(student, num_classes=NCLS, in_channels=C_IN)
    t = create_model(teacher, num_classes=NCLS, in_channels=C_IN)
    x = torch.randn(B, C_IN, HW, HW)
    y = torch.randint(0, NCLS, (B,))
    idx = torch.arange(3, 3 + B)
    return s, t, x, y, idx


def zoo_ctx(x: torch.Tensor) -> BuildContext:
    labels = torch.arange(NSAMP) % NCLS  # the training labels (CRD's "exact" negatives need them)
    return BuildContext(example_input=x, batch_size=B, num_classes=NCLS, num_samples=NSAMP,
                        train_targets=labels)


def train_few_steps(d: Distiller, x: torch.Tensor, y: torch.Tensor, steps: int = 6, lr: float = 0.02
                    ) -> tuple[list[float], dict[str, torch.Tensor | None]]:
    """SGD steps on one batch: the total losses, and the first step's gradients of the method's own
    parameters (None where no gradient arrived)."""
    opt = torch.optim.SGD(d.trainable_parameters(), lr=lr, momentum=0.9)
    totals, first_grads = [], {}
    idx = torch.arange(len(y))
    d.train()
    for step in range(steps):
        _, losses = d(x, y, idx)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if step == 0:
            first_grads = {k: (p.grad.clone() if p.grad is not None else None)
                           for k, p in d.named_parameters() if d._is_extra(k)}
        opt.step()
        totals.append(total.item())
    return totals, first_grads
