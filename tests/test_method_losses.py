"""Method losses against small cases computed independently (plain Python arithmetic, not the
library's own functions), the layers each method uses, and the defaults taken from the authors' scripts:
FitNet, AT, SP, VID, PKT, RKD, CC, IRG, DKD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import make_pair, outputs
from torch import nn

from semckd.methods import build_distiller, method_options
from semckd.methods.at import at_loss
from semckd.methods.cc import cc_loss, cc_loss_repdistiller
from semckd.methods.dkd import dkd_loss
from semckd.methods.fitnet import ConvReg
from semckd.methods.irg import irg_edges, irg_graph_loss, irg_transform_loss
from semckd.methods.pkt import pkt_loss
from semckd.methods.rkd import rkd_angle_loss, rkd_distance_loss
from semckd.methods.sp import sp_loss
from semckd.methods.vid import VIDRegressor, vid_nll

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


# ---------------------------------------------------------------------- hand-computed losses
def test_at_loss_one_channel_2x2() -> None:
    f_s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    f_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    a = [v * v / math.sqrt(1 + 16 + 81 + 256) for v in (1, 2, 3, 4)]
    b = [v / math.sqrt(2) for v in (1, 0, 0, 1)]
    expected = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)) / 4
    assert at_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)
    # a larger student map is average-pooled to the teacher's size first
    big = torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0],
                        [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]).view(1, 1, 4, 4)
    assert at_loss(big, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_sp_loss_batch_of_two() -> None:
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_s = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    g_t = [[1.0, 0.0], [0.0, 1.0]]
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    assert sp_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)
    # only the batch size must agree: a 4-D map with other widths works
    assert sp_loss(f_s.view(2, 2, 1, 1), torch.randn(2, 3, 2, 2)).shape == ()


def _cond_probs(vectors: list[list[float]]) -> list[list[float]]:
    norms = [math.sqrt(sum(v * v for v in vec)) for vec in vectors]
    k = [[(sum(a * b for a, b in zip(u, w, strict=True)) / (nu * nw) + 1) / 2 for w, nw in zip(vectors, norms,
                                                                                               strict=True)]
         for u, nu in zip(vectors, norms, strict=True)]
    return [[v / sum(row) for v in row] for row in k]


def test_pkt_loss_hand_case() -> None:
    s = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
    t = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    p_s, p_t = _cond_probs(s), _cond_probs(t)
    eps = 1e-7
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
                   for i in range(3) for j in range(3)) / 9
    assert pkt_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-4)
    assert pkt_loss(torch.tensor(t), torch.tensor(t)).item() == pytest.approx(0.0, abs=1e-6)


def _smooth_l1(diffs: list[float]) -> float:
    return sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diffs) / len(diffs)


def _unit(v: tuple[float, float]) -> tuple[float, float]:
    n = math.hypot(*v)
    return (0.0, 0.0) if n == 0 else (v[0] / n, v[1] / n)


def test_rkd_distance_and_angle_on_three_points() -> None:
    s = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    t = [(0.0, 0.0), (2.0, 0.0), (0.0, 3.0)]

    def norm_dist(pts):
        d = [[math.dist(p, q) for q in pts] for p in pts]
        mean = sum(sum(r) for r in d) / 6  # 6 off-diagonal entries
        return [v / mean for r in d for v in r]

    expected_d = _smooth_l1([a - b for a, b in zip(norm_dist(s), norm_dist(t), strict=True)])

    def angles(pts):
        out = []
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    u = _unit((pts[j][0] - pts[i][0], pts[j][1] - pts[i][1]))
                    w = _unit((pts[k][0] - pts[i][0], pts[k][1] - pts[i][1]))
                    out.append(u[0] * w[0] + u[1] * w[1])
        return out

    expected_a = _smooth_l1([a - b for a, b in zip(angles(s), angles(t), strict=True)])
    ts, tt = torch.tensor(s), torch.tensor(t)
    assert rkd_distance_loss(ts, tt).item() == pytest.approx(expected_d, rel=1e-5)
    assert rkd_angle_loss(ts, tt).item() == pytest.approx(expected_a, rel=1e-5)
    assert expected_a > 0 and expected_d > 0
    # the distiller's term is beta·(25·distance + 50·angle) on the pooled embeddings
    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("rkd", student, teacher, ctx)
    logits = torch.zeros(3, 5)
    emb_s = torch.cat([ts, torch.zeros(3, 6)], 1)  # zero padding changes no distance or angle
    out = d.distill_losses(outputs(logits, [], emb_s), outputs(logits, [], tt), torch.zeros(3).long(), None)
    assert out["rkd"].item() == pytest.approx(25 * expected_d + 50 * expected_a, rel=1e-5)


def test_cc_gaussian_kernel_hand_case() -> None:
    f_s = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # unit after normalising: cos = 0.6
    f_t = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # cos = 0

    def k(c: float, g: float = 0.4) -> float:
        return math.exp(-2 * g) * (1 + 2 * g * c + (2 * g) ** 2 / 2 * c * c)

    expected = 2 * (k(0.6) - k(0.0)) ** 2 / 4
    assert cc_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)
    # the RepDistiller/SemCKD code's formula: mean over i of Σ_d |Δ_i|·|Δ_{i+1}|
    a, b = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]]), torch.zeros(3, 2)
    assert cc_loss_repdistiller(a, b).item() == pytest.approx(((1 * 3 + 2 * 1) + 0) / 2)


def _dkd_reference(zs: list[list[float]], zt: list[list[float]], y: list[int], alpha: float, beta: float,
                   temp: float) -> float:
    def softmax(v):
        m = max(v)
        e = [math.exp(a - m) for a in v]
        return [a / sum(e) for a in e]

    total = 0.0
    for s_row, t_row, gt in zip(zs, zt, y, strict=True):
        ps, pt = softmax([v / temp for v in s_row]), softmax([v / temp for v in t_row])
        bs, bt = [ps[gt], 1 - ps[gt]], [pt[gt], 1 - pt[gt]]
        tckd = sum(q * math.log(q / p) for q, p in zip(bt, bs, strict=True))
        qs = softmax([v / temp for i, v in enumerate(s_row) if i != gt])
        qt = softmax([v / temp for i, v in enumerate(t_row) if i != gt])
        nckd = sum(q * math.log(q / p) for q, p in zip(qt, qs, strict=True))
        total += alpha * tckd + beta * nckd
    return total / len(y) * temp**2


def test_dkd_matches_direct_formula() -> None:
    torch.manual_seed(1)
    zs, zt = torch.randn(4, 6) * 3, torch.randn(4, 6) * 3
    y = torch.tensor([0, 5, 2, 2])
    expected = _dkd_reference(zs.tolist(), zt.tolist(), y.tolist(), 1.0, 8.0, 4.0)
    assert dkd_loss(zs, zt, y, 1.0, 8.0, 4.0).item() == pytest.approx(expected, rel=1e-5)
    assert dkd_loss(zs, zt, y, 2.0, 0.5, 2.0).item() == pytest.approx(
        _dkd_reference(zs.tolist(), zt.tolist(), y.tolist(), 2.0, 0.5, 2.0), rel=1e-5)

    # logit standardisation: z-score each row (unbiased std) first
    def zscore(rows):
        out = []
        for r in rows:
            m = sum(r) / len(r)
            sd = math.sqrt(sum((v - m) ** 2 for v in r) / (len(r) - 1))
            out.append([(v - m) / sd for v in r])
        return out

    expected_std = _dkd_reference(zscore(zs.tolist()), zscore(zt.tolist()), y.tolist(), 1.0, 8.0, 4.0)
    got = dkd_loss(zs, zt, y, 1.0, 8.0, 4.0, standardize=True).item()
    assert got == pytest.approx(expected_std, rel=1e-4)
    # a confident teacher (p_gt → 1 in float32) stays finite
    sharp = torch.zeros(1, 6)
    sharp[0, 0] = 200.0
    assert torch.isfinite(dkd_loss(torch.zeros(1, 6), sharp, torch.tensor([0]))).all()


def test_dkd_warmup_follows_epoch_and_survives_state_dict() -> None:
    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("dkd", student, teacher, ctx)
    assert (d.ce_weight, d.kd_weight, d.alpha, d.beta) == (1.0, 0.0, 1.0, 8.0)
    assert (d.temperature, d.warmup) == (4.0, 20)
    _, losses = d(x, y)
    assert set(losses) == {"ce", "dkd"}
    full = dkd_loss(student(x), teacher(x), y).item()
    for epoch, factor in [(0, 1 / 20), (1, 1 / 20), (10, 0.5), (20, 1.0), (240, 1.0)]:
        d.on_epoch_start(epoch)
        _, losses = d(x, y)
        assert losses["dkd"].item() == pytest.approx(factor * full, rel=1e-5)
    d.on_epoch_start(7)
    sd = d.extras_state_dict()
    assert set(sd) == {"epoch"}
    d2 = build_distiller("dkd", student, teacher, ctx)
    d2.load_extras_state_dict(sd)
    assert d2.ramp(d2.warmup) == pytest.approx(7 / 20)
    # logit_std=True is the same loss on standardised logits
    d3 = build_distiller("dkd", student, teacher, ctx, {"logit_std": True, "warmup": 0})
    _, losses = d3(x, y)
    assert losses["dkd"].item() == pytest.approx(dkd_loss(student(x), teacher(x), y, standardize=True).item(),
                                                 rel=1e-5)


def test_vid_nll_and_initial_variance() -> None:
    mean = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    target = torch.tensor([0.0, 4.0]).view(1, 2, 1, 1)
    log_scale = torch.tensor([0.5, -1.0])
    eps = 1e-5
    var = [math.log1p(math.exp(v)) + eps for v in (0.5, -1.0)]
    terms = [(m - t) ** 2 / v + math.log(v) for m, t, v in zip((1, 2), (0, 4), var, strict=True)]
    expected = 0.5 * sum(terms) / 2
    assert vid_nll(mean, target, log_scale, eps).item() == pytest.approx(expected, rel=1e-6)
    reg = VIDRegressor(3, 4)
    assert torch.allclose(F.softplus(reg.log_scale) + reg.eps, torch.full((4,), 5.0))


def test_fitnet_regressor_shapes_and_loss() -> None:
    def shape(c, h):
        return torch.Size([2, c, h, h])

    assert isinstance(ConvReg(shape(4, 8), shape(6, 4)).conv, nn.Conv2d)
    assert ConvReg(shape(4, 8), shape(6, 4)).conv.stride == (2, 2)
    assert isinstance(ConvReg(shape(4, 4), shape(6, 8)).conv, nn.ConvTranspose2d)
    assert ConvReg(shape(4, 4), shape(6, 4)).conv.kernel_size == (1, 1)
    assert ConvReg(shape(4, 6), shape(6, 4)).conv.kernel_size == (3, 3)
    for s_h, t_h in [(4, 8), (4, 4), (8, 4)]:
        out = ConvReg(shape(4, s_h), shape(6, t_h))(torch.randn(shape(4, s_h)))
        assert out.shape == shape(6, t_h)
    # the SemCKD code's fourth case: student smaller but not half size → same-size 3×3 conv, and the
    # teacher map is average-pooled to the student's size
    reg4 = ConvReg(shape(4, 3), shape(6, 8))
    assert reg4.conv.kernel_size == (3, 3) and reg4.conv.stride == (1, 1) and reg4.conv.padding == (1, 1)
    assert reg4(torch.randn(shape(4, 3))).shape == shape(6, 3)
    t8 = torch.randn(shape(6, 8))
    assert torch.equal(reg4.match_target(t8), F.adaptive_avg_pool2d(t8, (3, 3)))
    assert ConvReg(shape(4, 8), shape(6, 4)).match_target(t8) is t8
    with pytest.raises(ValueError, match="hint_layer"):
        ConvReg(torch.Size([2, 4, 3, 9]), torch.Size([2, 6, 8, 4]))

    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("fitnet", student, teacher, ctx)
    assert (d.s_idx, d.t_idx, d.beta) == (1, 1, 100.0)  # SemCKD/SimKD's --hint_layer 1 (stem = 0)
    d2 = build_distiller("fitnet", student, teacher, ctx, {"hint_layer": 2})  # RepDistiller's default
    assert (d2.s_idx, d2.t_idx) == (2, 2)
    assert d2.regressor.conv.in_channels == 8 and d2.regressor.conv.out_channels == 16
    # make the regressor the identity up to BN's eps: the loss is then 100·MSE(relu(f_s), f_t)
    reg = build_distiller("fitnet", student, student, ctx, {"hint_layer": 2})  # same widths on both sides
    with torch.no_grad():
        reg.regressor.conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        reg.regressor.conv.bias.zero_()
    reg.regressor.eval()
    f_s, f_t = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    feats_s = [None, None, f_s, None]
    feats_t = [None, None, f_t, None]
    got = reg.distill_losses(outputs(None, feats_s, None), outputs(None, feats_t, None), y, None)["fitnet"]
    expected = 100 * (torch.relu(f_s / math.sqrt(1 + 1e-5)) - f_t).pow(2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        build_distiller("fitnet", student, teacher, ctx, {"hint_layer": 7})


def test_irg_edges_vertex_and_transform_hand_case() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    e_s = [[0, 1, 1], [1, 0, 2], [1, 2, 0]]
    e_t = [[0, 4, 9], [4, 0, 13], [9, 13, 0]]
    e_s = [[v / 2 for v in r] for r in e_s]
    e_t = [[v / 13 for v in r] for r in e_t]
    assert torch.allclose(irg_edges(s), torch.tensor(e_s), atol=1e-6)
    edge = sum((e_s[i][j] - e_t[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    vertex = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True)) / 6
    assert irg_graph_loss(s, t).item() == pytest.approx(edge + vertex, rel=1e-5)
    # different widths: edges only
    assert irg_graph_loss(torch.cat([s, torch.zeros(3, 1)], 1), t).item() == pytest.approx(edge, rel=1e-5)
    # transform: (MSE(E_s1, E_s2) - MSE(E_t1, E_t2))², with a vertex term when the layers share a shape
    s2, t2 = 2 * s + 1, t.flip(0)
    ms = F.mse_loss(irg_edges(s), irg_edges(s2)).item()  # 0: a scaled copy has the same normalised edges
    mt = sum((a - b) ** 2 for a, b in zip(irg_edges(t).flatten().tolist(), irg_edges(t2).flatten().tolist(),
                                              strict=True)) / 9
    vs = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), s2.flatten().tolist(), strict=True)) / 6
    vt = sum((a - b) ** 2 for a, b in zip(t.flatten().tolist(), t2.flatten().tolist(), strict=True)) / 6
    assert ms == pytest.approx(0.0, abs=1e-12)
    assert irg_transform_loss(s, s2, t, t2).item() == pytest.approx((ms - mt) ** 2 + (vs - vt) ** 2, rel=1e-5)
    assert irg_transform_loss(s, s2, t, t2, edge_transform=False).item() == pytest.approx((vs - vt) ** 2,
                                                                                          rel=1e-5)


def test_irg_transform_layers_option() -> None:
    student, teacher, x, y, ctx = make_pair()
    plain = build_distiller("irg", student, teacher, ctx)
    both = build_distiller("irg", student, teacher, ctx, {"transform_layers": [1, 3]})
    assert both.s_pairs == [(1, 3)] and both.t_pairs == [(1, 3)]
    _, lp = plain(x, y)
    _, lb = both(x, y)
    assert lb["irg"].item() > lp["irg"].item()
    with pytest.raises(ValueError, match="pairs"):
        build_distiller("irg", student, teacher, ctx, {"transform_layers": [1, 2, 3]})
    with pytest.raises(ValueError, match="out of range"):
        build_distiller("irg", student, teacher, ctx, {"transform_layers": [1, 9]})


def test_stage_pairing_drops_the_stem_like_the_authors() -> None:
    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("at", student, teacher, ctx)
    _, losses = d(x, y)
    s_feats, t_feats = d.s_tap.features, d.t_tap.features
    expected = 1000 * sum(at_loss(a, b) for a, b in zip(s_feats[1:], t_feats[1:], strict=True))
    assert losses["at"].item() == pytest.approx(expected.item(), rel=1e-5)
    d.remove_taps()
    # explicitly named layers are all used
    d = build_distiller("at", student, teacher, ctx, {"student_layers": ["layer2", "layer3"],
                                                      "teacher_layers": ["layer2", "layer3"]})
    _, losses = d(x, y)
    without_layer1 = expected.item() - 1000 * at_loss(s_feats[1], t_feats[1]).item()
    assert losses["at"].item() == pytest.approx(without_layer1, rel=1e-5)
    d.remove_taps()
    v = build_distiller("vid", student, teacher, ctx)
    assert [r.mean[0].in_channels for r in v.regressors] == [4, 8, 8]
    assert [r.mean[-1].out_channels for r in v.regressors] == [8, 16, 12]


def test_defaults_follow_the_semckd_scripts() -> None:
    # -r 1 -a 1 -b <beta> of DefangChen/SemCKD scripts/run_cifar_distill.sh; DKD from mdistiller
    betas = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "vid": 1.0, "pkt": 30000.0, "rkd": 1.0, "cc": 0.02,
             "irg": 0.005}
    for m, beta in betas.items():
        opts = method_options(m)
        assert (opts["ce_weight"], opts["kd_weight"], opts["beta"], opts["temperature"]) == (1, 1, beta, 4)
    opts = method_options("dkd")
    assert (opts["ce_weight"], opts["kd_weight"], opts["alpha"], opts["beta"]) == (1, 0, 1, 8)
    assert opts["warmup"] == 20
    assert (method_options("rkd")["w_d"], method_options("rkd")["w_a"]) == (25.0, 50.0)


