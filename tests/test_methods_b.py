"""CRD, HKD, SimKD and ReviewKD: losses against hand-written formulas, and short training runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semckd.methods import BuildContext, Outputs, build_distiller, method_options
from semckd.methods.crd import ContrastMemory, nce_loss
from semckd.methods.hkd import information_flow_loss
from semckd.methods.reviewkd import hcl_loss
from semckd.models import create_model

B, C_IN, HW, NCLS, NSAMP = 8, 1, 16, 10, 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions are fastest single-threaded, and on a busy 2-core box extra threads thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(student: str = "resnet8", teacher: str = "resnet14", seed: int = 0):
    torch.manual_seed(seed)
    s = create_model(student, num_classes=NCLS, in_channels=C_IN)
    t = create_model(teacher, num_classes=NCLS, in_channels=C_IN)
    x = torch.randn(B, C_IN, HW, HW)
    y = torch.randint(0, NCLS, (B,))
    idx = torch.arange(3, 3 + B)
    return s, t, x, y, idx


def _ctx(x: torch.Tensor) -> BuildContext:
    labels = torch.arange(NSAMP) % NCLS  # the training labels (CRD's "exact" negatives need them)
    return BuildContext(example_input=x, batch_size=B, num_classes=NCLS, num_samples=NSAMP,
                        train_targets=labels)


# ---------------------------------------------------------------------------------------------- CRD
def test_crd_exact_negatives_come_from_other_classes_only():
    # RepDistiller/SemCKD CIFAR100InstanceSample(mode='exact'): negatives ~ uniform over other classes
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    mem = ContrastMemory(4, 10, nce_k=4000, nce_t=0.07, momentum=0.5, mode="exact", labels=labels)
    index = torch.tensor([0, 4, 7, 9])
    rows = mem.sample(index)
    assert torch.equal(rows[:, 0], index)
    for anchor, neg in zip(index.tolist(), rows[:, 1:], strict=True):
        others = [i for i in range(10) if labels[i] != labels[anchor]]
        assert set(neg.tolist()) == set(others)  # every other-class sample is drawn, no same-class one
        freq = torch.bincount(neg, minlength=10)[others].float() / neg.numel()
        assert torch.allclose(freq, torch.full_like(freq, 1 / len(others)), atol=0.03)  # uniformly
    uniform = ContrastMemory(4, 10, nce_k=4000, nce_t=0.07, momentum=0.5, mode="uniform")
    assert set(uniform.sample(index)[0, 1:].tolist()) == set(range(10))
    assert "_order" not in mem.state_dict()  # rebuilt from the labels, not checkpointed
    s, t, x, y, idx = _pair()
    assert method_options("crd")["mode"] == "exact"  # the authors' --mode default
    no_labels = build_distiller("crd", s, t, BuildContext(x, batch_size=B, num_classes=NCLS,
                                                          num_samples=NSAMP))
    with pytest.raises(ValueError, match="mode=uniform"):
        no_labels(x, y, idx)
    no_labels.remove_taps()
    with pytest.raises(ValueError, match="mode"):
        build_distiller("crd", s, t, _ctx(x), {"mode": "relax"})
    with pytest.raises(ValueError, match="two classes"):
        ContrastMemory(4, 3, 2, 0.07, 0.5, "exact", torch.zeros(3, dtype=torch.long))


def test_nce_loss_matches_formula():
    scores = torch.tensor([[0.5, 0.1, 0.02, 0.3], [0.05, 0.4, 0.2, 0.01]])
    n, eps = 50, 1e-7
    k = scores.shape[1] - 1
    expected = 0.0
    for row in scores.tolist():
        expected -= math.log(row[0] / (row[0] + k / n + eps))
        expected -= sum(math.log((k / n) / (p + k / n + eps)) for p in row[1:])
    expected /= scores.shape[0]
    assert nce_loss(scores, n).item() == pytest.approx(expected, rel=1e-6)


def test_contrast_memory_scores_and_update():
    torch.manual_seed(1)
    dim, n, tau, m = 4, 6, 0.5, 0.5
    mem = ContrastMemory(dim, n, nce_k=2, nce_t=tau, momentum=m)
    mem.memory_s.copy_(F.normalize(torch.randn(n, dim), dim=1))
    mem.memory_t.copy_(F.normalize(torch.randn(n, dim), dim=1))
    old_s, old_t = mem.memory_s.clone(), mem.memory_t.clone()
    v_s = F.normalize(torch.randn(2, dim), dim=1)
    v_t = F.normalize(torch.randn(2, dim), dim=1)
    index = torch.tensor([1, 4])
    cidx = torch.tensor([[1, 0, 5], [4, 2, 2]])
    out_s, out_t = mem(v_s, v_t, index, cidx)
    # independent computation: student embedding against the *teacher* bank, and vice versa
    def raw(bank, v):
        rows = [[math.exp(float(bank[j] @ v[i]) / tau) for j in cidx[i].tolist()] for i in range(2)]
        return torch.tensor(rows)

    raw_s, raw_t = raw(old_t, v_s), raw(old_s, v_t)
    z_s, z_t = raw_s.mean().item() * n, raw_t.mean().item() * n
    torch.testing.assert_close(out_s, raw_s / z_s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out_t, raw_t / z_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mem.z, torch.tensor([z_s, z_t]), rtol=1e-5, atol=0)
    # momentum update at exactly the given rows, re-normalised; the rest untouched
    for bank, old, v in ((mem.memory_s, old_s, v_s), (mem.memory_t, old_t, v_t)):
        for r, i in enumerate(index.tolist()):
            exp = m * old[i] + (1 - m) * v[r]
            torch.testing.assert_close(bank[i], exp / exp.norm())
        untouched = [i for i in range(n) if i not in index.tolist()]
        assert torch.equal(bank[untouched], old[untouched])
    # Z is fixed after the first batch
    mem(v_s, v_t, index, cidx)
    torch.testing.assert_close(mem.z, torch.tensor([z_s, z_t]), rtol=1e-5, atol=0)


def test_crd_defaults_and_small_data_clip():
    opts = method_options("crd")
    assert (opts["ce_weight"], opts["kd_weight"], opts["beta"]) == (1.0, 1.0, 0.8)
    assert (opts["feat_dim"], opts["nce_k"], opts["nce_t"], opts["nce_m"]) == (128, 16384, 0.07, 0.5)
    s, t, x, *_ = _pair()
    d = build_distiller("crd", s, t, _ctx(x))
    assert d.contrast.nce_k == NSAMP - 1
    assert d.contrast.memory_s.shape == (NSAMP, 128) and d.contrast.memory_t.shape == (NSAMP, 128)


def test_crd_needs_index():
    s, t, x, y, _ = _pair()
    d = build_distiller("crd", s, t, _ctx(x))
    with pytest.raises(ValueError, match="sample indices"):
        d(x, y, None)


def test_crd_memory_round_trips_through_extras():
    s, t, x, y, idx = _pair()
    d = build_distiller("crd", s, t, _ctx(x))
    before = d.contrast.memory_t.clone()
    d.train()
    d(x, y, idx)
    changed = (d.contrast.memory_t != before).any(dim=1)
    assert changed[idx].all() and not changed[[i for i in range(NSAMP) if i not in idx.tolist()]].any()
    extras = d.extras_state_dict()
    assert {"contrast.memory_s", "contrast.memory_t", "contrast.z", "embed_s.linear.weight"} <= set(extras)
    assert not any(k.startswith(("student.", "teacher.")) for k in extras)

    s2, t2, *_ = _pair(seed=1)
    s2.load_state_dict(s.state_dict())
    t2.load_state_dict(t.state_dict())
    d2 = build_distiller("crd", s2, t2, _ctx(x))
    d2.load_extras_state_dict({k: v.clone() for k, v in extras.items()})
    for k, v in d2.extras_state_dict().items():
        assert torch.equal(v, extras[k]), k
    d.eval()
    d2.eval()
    torch.manual_seed(7)
    _, l1 = d(x, y, idx)
    torch.manual_seed(7)
    _, l2 = d2(x, y, idx)
    assert l1["crd"].item() == pytest.approx(l2["crd"].item(), rel=1e-6)


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
    s, t, x, y, idx = _pair("vgg8", "resnet8")  # 4 vs 3 stages after the stem
    d = build_distiller("hkd", s, t, _ctx(x))
    so, to = d.probe(x)
    fs, ft = d._pairs(so.feats, to.feats)
    assert len(fs) == len(ft) == 3
    # the authors' zip(f_t, f_s): the shallowest min(S, T) stages after the stem are paired
    assert all(a is b for a, b in zip(fs, so.feats[1:4], strict=True))
    assert all(a is b for a, b in zip(ft, to.feats[1:], strict=True))
    deep = build_distiller("hkd", s, t, _ctx(x), {"pairing": "deepest"})
    fd, td = deep._pairs(so.feats, to.feats)
    assert fd[-1] is so.feats[-1] and fd[0] is so.feats[2] and td[0] is to.feats[1]
    deep.remove_taps()
    with pytest.raises(ValueError, match="pairing"):
        build_distiller("hkd", s, t, _ctx(x), {"pairing": "middle"})
    assert d.layer_weights(3) == [100.0, 1.0, 1.0]  # the SemCKD code's weighting
    d.eval()
    _, losses = d(x, y, idx)
    so, to = d.s_tap.features, d.t_tap.features
    fs, ft = d._pairs(so, to)
    exp = 100 * information_flow_loss(fs[0], ft[0]) + sum(
        information_flow_loss(a, b) for a, b in zip(fs[1:], ft[1:], strict=True))
    assert losses["hkd"].item() == pytest.approx(exp.item(), rel=1e-5)

    cp = build_distiller("hkd", s, t, _ctx(x), {"critical_period": True})
    cp.on_epoch_start(3)
    assert cp.layer_weights(3) == pytest.approx([100 * 0.7**3, 100 * 0.7**3, 1.0])


# -------------------------------------------------------------------------------------------- SimKD
def test_simkd_logits_reuse_teacher_classifier_and_mse():
    s, t, x, y, idx = _pair("resnet8", "resnet8x4")  # 64 → 256 channels
    d = build_distiller("simkd", s, t, _ctx(x))
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
    s, t, x, y, idx = _pair("vgg8", "resnet8")  # vgg8 final map 1×1 at 16px, resnet8 final 4×4
    d = build_distiller("simkd", s, t, _ctx(x))
    d.eval()
    _, losses = d(x, y, idx)
    f_s, f_t = d.s_tap.features[-1], d.t_tap.features[-1]
    assert f_s.shape[-1] < f_t.shape[-1]
    with torch.no_grad():
        exp = ((d.projector(f_s) - F.adaptive_avg_pool2d(f_t, f_s.shape[-2:])) ** 2).mean()
    assert losses["simkd"].item() == pytest.approx(exp.item(), rel=1e-5)


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
    s, t, x, y, idx = _pair("resnet8", "resnet8x4")
    d = build_distiller("reviewkd", s, t, _ctx(x))
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
    assert d.warmup_factor() == 1.0
    # the epoch survives a checkpoint round trip (resume continues the warm-up)
    d.on_epoch_start(7)
    extras = d.extras_state_dict()
    s2, t2, *_ = _pair("resnet8", "resnet8x4", seed=1)
    d2 = build_distiller("reviewkd", s2, t2, _ctx(x))
    d2.load_extras_state_dict(extras)
    assert d2.warmup_factor() == pytest.approx(7 / 20)


def test_reviewkd_teacher_levels_are_pre_activation_like_the_authors():
    # dvlab-research/ReviewKD train.py: teacher(images, is_feat=True, preact=True); student post-ReLU
    for teacher_arch, n_levels in (("resnet8x4", 3), ("vgg8", 3)):  # vgg8: its deepest 3 of 4 are paired
        s, t, x, y, idx = _pair("resnet8", teacher_arch)
        d = build_distiller("reviewkd", s, t, _ctx(x))
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
        off = build_distiller("reviewkd", s, t, _ctx(x), {"teacher_preact": False})
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


# ------------------------------------------------------------------------------------------ training
# CRD gets a larger (virtual) training set: with 40 samples most negatives would be the batch itself
@pytest.mark.parametrize("method,opts,num_samples", [
    ("crd", {"nce_k": 64}, 2000),
    ("hkd", {}, NSAMP),
    ("simkd", {}, NSAMP),
    ("reviewkd", {}, NSAMP),
])
def test_trains_on_fixed_batch(method, opts, num_samples):
    s, t, x, y, idx = _pair("resnet8", "resnet14")
    ctx = BuildContext(example_input=x, batch_size=B, num_classes=NCLS, num_samples=num_samples,
                       train_targets=torch.arange(num_samples) % NCLS)
    d = build_distiller(method, s, t, ctx, opts)
    if hasattr(d, "on_epoch_start"):
        d.on_epoch_start(30)  # past ReviewKD's warm-up
    teacher_before = {k: v.clone() for k, v in t.state_dict().items()}
    own = [p for n, p in d.named_parameters() if not n.startswith(("student.", "teacher."))]
    params = d.trainable_parameters()
    assert not any(p is q for p in params for q in t.parameters())
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    d.train()
    totals = []
    torch.manual_seed(0)
    for step in range(8):
        _, losses = d(x, y, idx)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is None for p in t.parameters())
            if own:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
        opt.step()
        totals.append(loss.item())
    assert all(math.isfinite(v) for v in totals)
    assert totals[-1] < totals[0], totals
    for k, v in t.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


# ---------------------------------------------------------------------------------------- CRD + DDP
def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    from semckd.methods.crd import ContrastMemory

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different initial banks per rank: rank 0's must win
        mem = ContrastMemory(4, 10, nce_k=3, nce_t=0.5, momentum=0.5)
        initial0 = mem.memory_s.clone()
        n = 2 + rank  # unequal batch sizes per rank
        v = F.normalize(torch.randn(n, 4), dim=1)
        index = torch.arange(n) + 5 * rank
        mem(v, v.clone(), index)
        out[rank] = (initial0, mem.memory_s.clone(), mem.memory_t.clone(), mem.z.clone(), v, index)
    finally:
        dist.destroy_process_group()


def test_crd_memory_stays_identical_across_ranks():
    import multiprocessing as mp
    import socket

    ctx = mp.get_context("fork")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        res = dict(out)
    init0, mem_s0, mem_t0, z0, v0, i0 = res[0]
    _, mem_s1, mem_t1, z1, v1, i1 = res[1]
    assert torch.equal(mem_s0, mem_s1) and torch.equal(mem_t0, mem_t1) and torch.equal(z0, z1)
    # every rank's rows were written, starting from rank 0's initial bank
    for v, idx in ((v0, i0), (v1, i1)):
        for r, i in enumerate(idx.tolist()):
            exp = 0.5 * init0[i] + 0.5 * v[r]
            torch.testing.assert_close(mem_s0[i], exp / exp.norm())
    untouched = [i for i in range(10) if i not in i0.tolist() + i1.tolist()]
    assert torch.equal(mem_s0[untouched], init0[untouched])
