"""ReviewKD (knowledge review): HCL against its formula, levels, warm-up and pre-activation teacher
levels."""

from __future__ import annotations

import pytest
import torch
from method_helpers import zoo_ctx, zoo_pair

from semckd.methods import Outputs, build_distiller
from semckd.methods.reviewkd import hcl_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


# ----------------------------------------------------------------------------------------- ReviewKD
def test_hcl_loss_matches_formula():
    torch.manual_seed(3)
    a4, b4 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a1, b1 = torch.randn(2, 5, 1, 1), torch.randn(2, 5, 1, 1)

    def mse(u, v):
        return ((u - v) ** 2).mean()

    def pool(u, k):
        n, c, h, w = u.shape
        return u.reshape(n, c, k, h // k, k, w // k).mean(dim=(3, 5))

    # 4×4 map: levels 2 and 1 only (4 is not smaller than h); weights 1, 1/2, 1/4 over 1.75
    lvl4 = (mse(a4, b4) + 0.5 * mse(pool(a4, 2), pool(b4, 2)) + 0.25 * mse(pool(a4, 1), pool(b4, 1))) / 1.75
    lvl1 = mse(a1, b1)  # 1×1 map: no pyramid
    assert hcl_loss([a4, a1], [b4, b1]).item() == pytest.approx((lvl4 + lvl1).item(), rel=1e-6)


def test_reviewkd_warmup_levels_and_resume():
    s, t, x, y, idx = zoo_pair("resnet8", "resnet8x4")
    d = build_distiller("reviewkd", s, t, zoo_ctx(x))
    assert (d.ce_weight, d.kd_weight, d.beta, d.warmup_epochs) == (1.0, 0.0, 1.0, 20.0)
    d.eval()
    so, to = d.probe(x)
    f_s, f_t = d.levels_pair(so, to)
    assert [f.shape for f in f_s] == [f.shape for f in f_t]
    assert len(f_t) == len(to.feats)  # stages after the stem + the pooled embedding
    assert f_t[-1].shape[-2:] == (1, 1)
    d.on_epoch_start(5)
    _, losses = d(x, y, idx)
    so, to = _last_outputs(d)
    f_s, f_t = d.levels_pair(so, to)
    assert losses["reviewkd"].item() == pytest.approx(0.25 * hcl_loss(f_s, f_t).item(), rel=1e-5)
    d.on_epoch_start(40)
    assert d.ramp(d.warmup_epochs) == 1.0
    # the epoch survives a checkpoint round trip (resume continues the warm-up)
    d.on_epoch_start(7)
    extras = d.extras_state_dict()
    s2, t2, *_ = zoo_pair("resnet8", "resnet8x4", seed=1)
    d2 = build_distiller("reviewkd", s2, t2, zoo_ctx(x))
    d2.load_extras_state_dict(extras)
    assert d2.ramp(d2.warmup_epochs) == pytest.approx(7 / 20)


def test_reviewkd_teacher_levels_are_pre_activation_like_the_authors():
    # dvlab-research/ReviewKD train.py: teacher(images, is_feat=True, preact=True); student post-ReLU
    for teacher_arch, n_levels in (("resnet8x4", 3), ("vgg8", 3)):  # vgg8: its deepest 3 of 4 are paired
        s, t, x, y, idx = zoo_pair("resnet8", teacher_arch)
        d = build_distiller("reviewkd", s, t, zoo_ctx(x))
        d.eval()
        so, to = d.probe(x)
        _, lt = d._paired(so, to)
        post = to.feats[len(to.feats) - n_levels:]
        pre = lt[:-1]  # the last level is the pooled embedding
        assert len(pre) == n_levels
        for a, b in zip(pre, post, strict=True):
            assert a.shape == b.shape and bool((a < 0).any())  # before the ReLU: negative values remain
            assert torch.allclose(torch.relu(a), b)  # and the ReLU of it is the stage output
        ls, _ = d._paired(so, to)
        assert all(bool((f >= 0).all()) for f in ls[:-1])  # student levels stay post-activation
        d.remove_taps()
        off = build_distiller("reviewkd", s, t, zoo_ctx(x), {"teacher_preact": False})
        so, to = off.probe(x)
        _, lt = off._paired(so, to)
        assert all(a is b for a, b in zip(lt[:-1], to.feats[len(to.feats) - n_levels:], strict=True))
        off.remove_taps()
        assert not t._forward_hooks and all(not m._forward_hooks for m in t.modules())


def _last_outputs(d):
    """Both networks' outputs as the taps saw them in the last forward pass."""
    s = Outputs(torch.empty(0), d.s_tap.features, d.s_tap.inputs[0].flatten(1))
    t = Outputs(torch.empty(0), d.t_tap.features, d.t_tap.inputs[0].flatten(1))
    return s, t


