"""SimKD (reused teacher classifier): logits through the projector and the teacher's head, MSE,
spatial alignment, and the deployable network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_helpers import zoo_ctx, zoo_pair

from semckd.methods import build_distiller

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


# -------------------------------------------------------------------------------------------- SimKD
def test_simkd_logits_reuse_teacher_classifier_and_mse():
    s, t, x, y, idx = zoo_pair("resnet8", "resnet8x4")  # 64 → 256 channels
    d = build_distiller("simkd", s, t, zoo_ctx(x))
    assert (d.ce_weight, d.kd_weight, d.beta) == (0.0, 0.0, 1.0)
    d.eval()
    logits, losses = d(x, y, idx)
    assert set(losses) == {"simkd"}
    with torch.no_grad():
        f_s = d.s_tap.features[-1]
        f_t = d.t_tap.features[-1]
        proj = d.projector(f_s)
        expected_logits = t.fc(proj.mean(dim=(2, 3)))
        expected_mse = ((proj - f_t) ** 2).mean()
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    assert losses["simkd"].item() == pytest.approx(expected_mse.item(), rel=1e-5)
    # the deployable network gives the same predictions without the distiller's forward
    dep = d.deployable_student().eval()
    with torch.no_grad():
        torch.testing.assert_close(dep(x), logits, rtol=1e-5, atol=1e-6)
    # projector shape: 1×1 to t/2, 3×3, 1×1 to t (factor 2), each followed by BN-ReLU
    convs = [m for m in d.projector.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (64, 128, (1, 1)), (128, 128, (3, 3)), (128, 256, (1, 1))]
    # the student's own classifier is unused and frozen
    assert not any(p.requires_grad for p in s.fc.parameters())
    assert all(p is not s.fc.weight for p in d.trainable_parameters())


def test_simkd_pools_the_larger_map():
    s, t, x, y, idx = zoo_pair("vgg8", "resnet8")  # vgg8 final map 1×1 at 16px, resnet8 final 4×4
    d = build_distiller("simkd", s, t, zoo_ctx(x))
    d.eval()
    _, losses = d(x, y, idx)
    f_s, f_t = d.s_tap.features[-1], d.t_tap.features[-1]
    assert f_s.shape[-1] < f_t.shape[-1]
    with torch.no_grad():
        exp = ((d.projector(f_s) - F.adaptive_avg_pool2d(f_t, f_s.shape[-2:])) ** 2).mean()
    assert losses["simkd"].item() == pytest.approx(exp.item(), rel=1e-5)


