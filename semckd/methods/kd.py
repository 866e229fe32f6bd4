"""The two reference points every KD table starts with: the student alone, and Hinton's KD."""

from __future__ import annotations

from torch import nn

from .base import BuildContext, Distiller
from .options import Weight
from .registry import register_method


@register_method
class Vanilla(Distiller):
    """Cross-entropy only: the student trained without a teacher (the table's baseline row)."""

    name = "vanilla"
    paper = "—"
    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, **kw) -> None:
        kw.setdefault("kd_weight", 0.0)
        super().__init__(student, None, ctx, **kw)


@register_method
class KD(Distiller):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    Defaults follow the SemCKD paper's KD runs (DefangChen/SemCKD ``scripts/run_cifar_distill.sh``:
    ``--distill kd -r 1 -a 1 -b 0``): 1·CE + 1·KL at T=4. The CRD paper's KD row (RepDistiller's
    ``-r 0.1 -a 0.9``) is ``ce_weight=0.1, kd_weight=0.9``. ``logit_std=True`` gives KD with logit
    standardisation (Sun et al., CVPR 2024); its authors' settings are ``ce_weight=0.1, kd_weight=9,
    temperature=2`` (the recipes ``*/kd_ls.yaml`` set them).
    """

    name = "kd"
    paper = "Hinton et al. 2015, arXiv:1503.02531"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
