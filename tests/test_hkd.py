"""HKD (information-flow modelling): the loss against its formula, layer pairs and weights."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import zoo_ctx, zoo_pair

from semckd.methods import build_distiller
from semckd.methods.hkd import information_flow_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


# ---------------------------------------------------------------------------------------------- HKD
def _probs_direct(f: torch.Tensor, kernel: str) -> list[list[float]]:
    rows = f.flatten(1).double().tolist()
    n = len(rows)
    sim = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            a, b = rows[i], rows[j]
            if kernel == "cos":
                na, nb = math.sqrt(sum(v * v for v in a)) + 1e-6, math.sqrt(sum(v * v for v in b)) + 1e-6
                sim[i][j] = (sum(p * q for p, q in zip(a, b, strict=True)) / (na * nb) + 1) / 2
            else:
                d = math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) + 1e-6)
                sim[i][j] = 1 / (1 + d)
    return [[v / sum(r) for v in r] for r in sim]


def test_information_flow_loss_matches_formula():
    torch.manual_seed(2)
    fs, ft = torch.randn(3, 2, 2, 2), torch.randn(3, 5)  # different layer shapes, same batch
    expected = 0.0
    for kernel in ("cos", "t"):
        ps, pt = _probs_direct(fs, kernel), _probs_direct(ft, kernel)
        terms = [(pt[i][j] - ps[i][j]) * (math.log(pt[i][j]) - math.log(ps[i][j]))
                 for i in range(3) for j in range(3)]
        expected += sum(terms) / len(terms)
    assert information_flow_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    assert information_flow_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-9)


def test_hkd_layer_weights_and_pairs():
    s, t, x, y, idx = zoo_pair("vgg8", "resnet8")  # 4 vs 3 stages after the stem
    d = build_distiller("hkd", s, t, zoo_ctx(x))
    so, to = d.probe(x)
    fs, ft = d._pairs(so.feats, to.feats)
    assert len(fs) == len(ft) == 3
    # the authors' zip(f_t, f_s): the shallowest min(S, T) stages after the stem are paired
    assert all(a is b for a, b in zip(fs, so.feats[1:4], strict=True))
    assert all(a is b for a, b in zip(ft, to.feats[1:], strict=True))
    deep = build_distiller("hkd", s, t, zoo_ctx(x), {"pairing": "deepest"})
    fd, td = deep._pairs(so.feats, to.feats)
    assert fd[-1] is so.feats[-1] and fd[0] is so.feats[2] and td[0] is to.feats[1]
    deep.remove_taps()
    with pytest.raises(ValueError, match="pairing"):
        build_distiller("hkd", s, t, zoo_ctx(x), {"pairing": "middle"})
    assert d.layer_weights(3) == [100.0, 1.0, 1.0]  # the SemCKD code's weighting
    d.eval()
    _, losses = d(x, y, idx)
    so, to = d.s_tap.features, d.t_tap.features
    fs, ft = d._pairs(so, to)
    exp = 100 * information_flow_loss(fs[0], ft[0]) + sum(
        information_flow_loss(a, b) for a, b in zip(fs[1:], ft[1:], strict=True))
    assert losses["hkd"].item() == pytest.approx(exp.item(), rel=1e-5)

    cp = build_distiller("hkd", s, t, zoo_ctx(x), {"critical_period": True})
    cp.on_epoch_start(3)
    assert cp.layer_weights(3) == pytest.approx([100 * 0.7**3, 100 * 0.7**3, 1.0])


