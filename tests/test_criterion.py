"""semckd.criterion: parity with a direct transcription of the equations, gradients, modes, input checks,
torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference import ReferenceSemCKD, benchmark
from semckd.criterion import SemCKD


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box OpenMP barrier waits
    make each step seconds long; restored afterwards for other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- independent transcription
def naive_semckd(sd: dict[str, torch.Tensor], fs: list[torch.Tensor], ft: list[torch.Tensor],
                 mode: str = "faithful", training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations written out with explicit loops over samples and pairs.

    Reads parameters by name from a module's ``state_dict()`` (``query.i``, ``key.j``,
    ``projectors.i.j``) and calls no code from the library.
    """
    B, S, T = fs[0].shape[0], len(fs), len(ft)
    ft = [f.detach() for f in ft]

    def mlp(prefix: str, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ sd[prefix + "linear1.weight"].t() + sd[prefix + "linear1.bias"])
        o = h @ sd[prefix + "linear2.weight"].t() + sd[prefix + "linear2.bias"]
        return o / o.norm(dim=1, keepdim=True)

    def describe(f: torch.Tensor) -> torch.Tensor:
        if mode == "faithful":
            flat = f.reshape(B, -1)
            return flat @ flat.t()
        return F.adaptive_avg_pool2d(f, (2, 2)).reshape(B, -1)

    q = [mlp(f"query.{i}.", describe(fs[i])) for i in range(S)]
    k = [mlp(f"key.{j}.", describe(ft[j])) for j in range(T)]
    rows = []
    for b in range(B):
        per_s = []
        for s in range(S):
            energy = torch.stack([(q[s][b] * k[t][b]).sum() for t in range(T)])
            per_s.append(torch.softmax(energy, dim=0))
        rows.append(torch.stack(per_s))
    alpha = torch.stack(rows)  # B × S × T

    def bn(x: torch.Tensor, p: str) -> torch.Tensor:
        if training:
            return F.batch_norm(x, None, None, sd[p + "weight"], sd[p + "bias"], True, 0.0, 1e-5)
        return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"],
                            sd[p + "bias"], False, 0.0, 1e-5)

    loss = fs[0].new_zeros(())
    for s in range(S):
        for t in range(T):
            h = min(fs[s].shape[2], ft[t].shape[2])
            w = min(fs[s].shape[3], ft[t].shape[3])
            x = F.adaptive_avg_pool2d(fs[s], (h, w))
            y = F.adaptive_avg_pool2d(ft[t], (h, w))
            p = f"projectors.{s}.{t}."
            z = torch.relu(bn(F.conv2d(x, sd[p + "0.weight"]), p + "1."))
            z = torch.relu(bn(F.conv2d(z, sd[p + "3.weight"], padding=1), p + "4."))
            z = F.conv2d(z, sd[p + "6.weight"])
            mse = ((z - y) ** 2).reshape(B, -1).mean(dim=1)
            loss = loss + (alpha[:, s, t] * mse).sum()
    return loss / (B * S), alpha


def feats(B: int, shapes: list[tuple[int, int, int]], seed: int, grad: bool = False,
          dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, *s, generator=g, dtype=dtype).relu() for s in shapes]
    return [f.requires_grad_() for f in out] if grad else out


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN affine params and running stats, so the parity tests see them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        for name, p in module.named_parameters():
            if ".1.weight" in name or ".4.weight" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif ".1.bias" in name or ".4.bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


CONFIGS = {
    # name: (B, student (C, H, W), teacher (C, H, W), factor)
    "three_layers": (8, [(4, 8, 8), (8, 4, 4), (16, 2, 2)], [(6, 8, 8), (12, 4, 4), (24, 2, 2)], 4),
    "more_than_ten": (4, [(2 + i % 3, 4 - i % 2, 4) for i in range(12)],
                      [(3 + i % 2, 2 + i % 3, 3) for i in range(11)], 2),
    "non_square": (6, [(4, 6, 10), (8, 3, 5)], [(6, 4, 12), (5, 6, 4), (3, 2, 2)], 3),
    "student_larger_and_smaller": (5, [(3, 8, 8), (5, 2, 2)], [(4, 4, 4)], 5),
}
IMPLS = {
    "fast": dict(cls=SemCKD, kw={}),
    "fast_nchw": dict(cls=SemCKD, kw={"channels_last": False}),
    "reference": dict(cls=ReferenceSemCKD, kw={}),
}


def build(impl: str, s_shapes, t_shapes, B: int, factor: int, mode: str = "faithful", seed: int = 0):
    torch.manual_seed(seed)
    spec = IMPLS[impl]
    m = spec["cls"]([c for c, _, _ in s_shapes], [c for c, _, _ in t_shapes], batch_size=B, factor=factor,
                    mode=mode, **spec["kw"])
    return randomize(m, seed)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_parity_with_naive_equations(config: str, impl: str) -> None:
    B, s_shapes, t_shapes, factor = CONFIGS[config]
    m = build(impl, s_shapes, t_shapes, B, factor)
    fs, ft = feats(B, s_shapes, 1, grad=True), feats(B, t_shapes, 2)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    want_loss, want_att = naive_semckd(sd, fs, ft)
    loss, att = m(fs, ft)
    assert att.shape == (B, len(s_shapes), len(t_shapes))
    torch.testing.assert_close(att, want_att, rtol=0, atol=1e-6)
    assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    # gradients w.r.t. the student features agree too (checks the batched backward)
    got = torch.autograd.grad(loss, fs)
    want = torch.autograd.grad(want_loss, fs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_parity_eval_mode_and_batch_free(impl: str) -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["non_square"]
    for mode in ("faithful", "batch_free"):
        m = build(impl, s_shapes, t_shapes, B, factor, mode=mode).eval()
        fs, ft = feats(B, s_shapes, 3), feats(B, t_shapes, 4)
        want_loss, want_att = naive_semckd(m.state_dict(), fs, ft, mode=mode, training=False)
        loss, att = m(fs, ft)
        torch.testing.assert_close(att, want_att, rtol=0, atol=1e-6)
        assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())


def test_float64_module_follows_dtype() -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["three_layers"]
    m = build("fast", s_shapes, t_shapes, B, factor).double()
    fs, ft = feats(B, s_shapes, 5, dtype=torch.float64), feats(B, t_shapes, 6, dtype=torch.float64)
    loss, att = m(fs, ft)
    assert loss.dtype == att.dtype == torch.float64
    want_loss, _ = naive_semckd(m.state_dict(), fs, ft)
    assert abs(loss.item() - want_loss.item()) <= 1e-10 * abs(want_loss.item())


def test_gradients_reach_student_mlps_projectors_not_teacher() -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["three_layers"]
    m = SemCKD([c for c, _, _ in s_shapes], [c for c, _, _ in t_shapes], batch_size=B, factor=factor)
    fs, ft = feats(B, s_shapes, 1, grad=True), feats(B, t_shapes, 2, grad=True)
    loss, att = m(fs, ft)
    # attention is not detached: it carries gradient back to the student features (via the Gram path)
    g_att = torch.autograd.grad(att[:, :, 0].sum(), fs, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in g_att)
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs)
    assert all(f.grad is None for f in ft)
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- modes and input checks
def test_faithful_mode_rejects_other_batch_sizes() -> None:
    m = SemCKD([4], [6], batch_size=8)
    with pytest.raises(ValueError, match=r"batch size 8 but got a batch of 5.*drop the last.*batch_free"):
        m(feats(5, [(4, 4, 4)], 1), feats(5, [(6, 4, 4)], 2))
    with pytest.raises(ValueError, match="batch size 8 but got a batch of 5"):
        ReferenceSemCKD([4], [6], batch_size=8)(feats(5, [(4, 4, 4)], 1), feats(5, [(6, 4, 4)], 2))


@pytest.mark.parametrize("B", [1, 7, 64])
def test_batch_free_takes_any_batch_size(B: int) -> None:
    s_shapes, t_shapes = [(4, 4, 4), (8, 2, 2)], [(6, 4, 4), (5, 2, 3)]
    m = SemCKD([4, 8], [6, 5], batch_size=16, mode="batch_free").eval()  # eval: BN needs no batch stats
    fs, ft = feats(B, s_shapes, B, grad=True), feats(B, t_shapes, B + 1)
    loss, att = m(fs, ft)
    assert att.shape == (B, 2, 2) and torch.isfinite(loss)
    torch.testing.assert_close(att.sum(-1), torch.ones(B, 2))
    loss.backward()
    assert all(f.grad is not None for f in fs)
    # a sample's attention does not depend on the rest of the batch
    one = m.attention([f[:1] for f in fs], [f[:1] for f in ft])
    torch.testing.assert_close(one[0], att[0], rtol=1e-5, atol=1e-6)


def test_batch_free_trains_with_batch_of_seven() -> None:
    m = SemCKD([4, 8], [6, 5], batch_size=64, mode="batch_free")  # train mode: BN batch statistics
    loss, att = m(feats(7, [(4, 4, 4), (8, 2, 2)], 1), feats(7, [(6, 4, 4), (5, 2, 3)], 2))
    assert att.shape == (7, 2, 2) and torch.isfinite(loss)


@pytest.mark.parametrize("impl", ["fast", "fast_nchw"])
def test_autocast_bf16_cpu_close_to_fp32(impl: str) -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["three_layers"]
    m = build(impl, s_shapes, t_shapes, B, factor).eval()
    fs, ft = feats(B, s_shapes, 1, grad=True), feats(B, t_shapes, 2)
    loss32, att32 = m(fs, ft)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, att16 = m(fs, ft)
    assert loss16.dtype == torch.float32 and att16.dtype == torch.float32
    torch.testing.assert_close(att16, att32, rtol=0, atol=1e-6)  # attention runs in fp32 regardless
    assert abs(loss16.item() - loss32.item()) <= 2e-2 * abs(loss32.item())
    loss16.backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in fs)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in m.parameters())


@pytest.mark.parametrize("impl", ["fast", "fast_nchw"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_keeps_no_more_for_backward_than_the_reference(config: str, impl: str) -> None:
    """Activation memory: the criterion (channels-last by default on CPU) must not keep layout copies
    beyond what the per-pair reference keeps (the criterion's memory target)."""
    from benchmarks.bench import saved_for_backward_mb

    B, s_shapes, t_shapes, factor = CONFIGS[config]
    fs, ft = feats(B, s_shapes, 1, grad=True), feats(B, t_shapes, 2)
    saved = {}
    for name in (impl, "reference"):
        m = build(name, s_shapes, t_shapes, B, factor)
        saved[name] = saved_for_backward_mb(lambda m=m: m(fs, ft)[0], exclude=[*m.parameters(), *fs])
    # allowed extras are parameter-sized, independent of the feature maps: the batched attention MLP
    # keeps stacked query/key weights
    extra = [*m.query.parameters(), *m.key.parameters()]
    extra_mb = sum(p.numel() * p.element_size() for p in extra) / 2**20
    assert 0 < saved[impl] <= saved["reference"] + extra_mb, saved


def test_channels_last_inputs_give_same_numbers() -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["three_layers"]
    m = build("fast", s_shapes, t_shapes, B, factor).eval()
    fs, ft = feats(B, s_shapes, 1), feats(B, t_shapes, 2)
    cl = [f.contiguous(memory_format=torch.channels_last) for f in fs + ft]
    (l1, a1), (l2, a2) = m(fs, ft), m(cl[:3], cl[3:])
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)


def test_bad_configuration_and_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown SemCKD mode"):
        SemCKD([4], [6], mode="fast")
    with pytest.raises(ValueError, match="batch_size=2, factor=4"):
        SemCKD([4], [6], batch_size=2)
    with pytest.raises(ValueError, match="at least one"):
        SemCKD([], [6])
    m = SemCKD([4, 8], [6], batch_size=4)
    with pytest.raises(ValueError, match="built for 2 student layers but got 1"):
        m(feats(4, [(4, 2, 2)], 1), feats(4, [(6, 2, 2)], 2))
    with pytest.raises(ValueError, match=r"student feature 1 has shape \(4, 7, 2, 2\)"):
        m(feats(4, [(4, 2, 2), (7, 2, 2)], 1), feats(4, [(6, 2, 2)], 2))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        m(feats(4, [(4, 2, 2), (8, 2, 2)], 1), feats(3, [(6, 2, 2)], 2))


def test_benchmark_helper_reports_all_variants() -> None:
    res = benchmark(batch_size=4, repeats=1, warmup=0, student=[(4, 4, 4), (8, 2, 2)],
                    teacher=[(6, 4, 4), (5, 2, 2)])
    assert set(res) == {"reference_fp32", "fast_fp32", "fast_bf16"}
    assert res["reference_fp32"]["speedup"] == 1.0
    assert res["fast_fp32"]["rel_loss_diff"] < 1e-5
    assert all(v["min_s"] > 0 and v["steps_per_s"] > 0 for v in res.values())


# ---------------------------------------------------------------------- torch.compile (opt-in)
def _compile_parity(backend: str, config: str) -> None:
    B, s_shapes, t_shapes, factor = CONFIGS[config]
    eager = build("fast", s_shapes, t_shapes, B, factor)
    comp = build("fast", s_shapes, t_shapes, B, factor)
    comp.torch_compile = backend
    assert comp.state_dict().keys() == eager.state_dict().keys()  # same layout: nothing wraps the module
    fs, ft = feats(B, s_shapes, 1, grad=True), feats(B, t_shapes, 2)
    want_loss, want_att = naive_semckd({k: v.clone() for k, v in comp.state_dict().items()}, fs, ft)
    loss, att = comp(fs, ft)
    assert not comp._compile_failed
    torch.testing.assert_close(att, want_att, rtol=0, atol=1e-6)
    assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    got, want = torch.autograd.grad(loss, fs), torch.autograd.grad(want_loss, fs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())
    eager(fs, ft)  # BN running statistics move exactly as in eager mode
    se, sc = eager.state_dict(), comp.state_dict()
    for k in se:
        torch.testing.assert_close(sc[k], se[k], rtol=1e-5, atol=1e-6)
    comp.eval()
    eager.eval()
    (l1, a1), (l2, a2) = comp(fs, ft), eager(fs, ft)
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-6)
    assert abs(l1.item() - l2.item()) <= 1e-5 * abs(l2.item())


def test_torch_compile_plumbing_keeps_parity_and_layout() -> None:
    # aot_eager: dynamo + AOT autograd without code generation (seconds); inductor below is slow
    _compile_parity("aot_eager", "three_layers")
    import copy

    m = copy.deepcopy(SemCKD([4], [6], batch_size=4, torch_compile=True))  # nothing unpicklable attached
    assert m.torch_compile is True and callable(m.compile)  # nn.Module.compile is not shadowed


@pytest.mark.slow
def test_torch_compile_inductor_parity() -> None:
    _compile_parity(True, "student_larger_and_smaller")


def test_torch_compile_failure_falls_back_to_eager() -> None:
    B, s_shapes, t_shapes, factor = CONFIGS["non_square"]
    eager = build("fast", s_shapes, t_shapes, B, factor).eval()
    bad = build("fast", s_shapes, t_shapes, B, factor).eval()
    bad.torch_compile = "no_such_backend"
    fs, ft = feats(B, s_shapes, 1), feats(B, t_shapes, 2)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        loss, att = bad(fs, ft)
    assert bad._compile_failed
    (l2, a2) = eager(fs, ft)
    torch.testing.assert_close(att, a2)
    torch.testing.assert_close(loss, l2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then eager without retrying
        bad(fs, ft)
    with pytest.raises(ValueError, match="torch_compile must be"):
        SemCKD([4], [6], torch_compile=1)  # type: ignore[arg-type]
