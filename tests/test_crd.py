"""CRD (contrastive representation distillation): NCE loss, the memory bank, exact negatives, and
the bank staying identical across DDP ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import NCLS, NSAMP, B, zoo_ctx, zoo_pair

from semckd.methods import BuildContext, build_distiller, method_options
from semckd.methods.crd import ContrastMemory, nce_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


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
    s, t, x, y, idx = zoo_pair()
    assert method_options("crd")["mode"] == "exact"  # the authors' --mode default
    no_labels = build_distiller("crd", s, t, BuildContext(x, batch_size=B, num_classes=NCLS,
                                                          num_samples=NSAMP))
    with pytest.raises(ValueError, match="mode=uniform"):
        no_labels(x, y, idx)
    no_labels.remove_taps()
    with pytest.raises(ValueError, match="mode"):
        build_distiller("crd", s, t, zoo_ctx(x), {"mode": "relax"})
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
    s, t, x, *_ = zoo_pair()
    d = build_distiller("crd", s, t, zoo_ctx(x))
    assert d.contrast.nce_k == NSAMP - 1
    assert d.contrast.memory_s.shape == (NSAMP, 128) and d.contrast.memory_t.shape == (NSAMP, 128)


def test_crd_needs_index():
    s, t, x, y, _ = zoo_pair()
    d = build_distiller("crd", s, t, zoo_ctx(x))
    with pytest.raises(ValueError, match="sample indices"):
        d(x, y, None)


def test_crd_memory_round_trips_through_extras():
    s, t, x, y, idx = zoo_pair()
    d = build_distiller("crd", s, t, zoo_ctx(x))
    before = d.contrast.memory_t.clone()
    d.train()
    d(x, y, idx)
    changed = (d.contrast.memory_t != before).any(dim=1)
    assert changed[idx].all() and not changed[[i for i in range(NSAMP) if i not in idx.tolist()]].any()
    extras = d.extras_state_dict()
    assert {"contrast.memory_s", "contrast.memory_t", "contrast.z", "embed_s.linear.weight"} <= set(extras)
    assert not any(k.startswith(("student.", "teacher.")) for k in extras)

    s2, t2, *_ = zoo_pair(seed=1)
    s2.load_state_dict(s.state_dict())
    t2.load_state_dict(t.state_dict())
    d2 = build_distiller("crd", s2, t2, zoo_ctx(x))
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
