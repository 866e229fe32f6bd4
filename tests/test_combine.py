"""Method combinations (``a+b``): one shared forward pass, ``ce``/``kd`` counted once, terms and hooks
merged, state round-trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_helpers import make_pair, train_few_steps
from torch import nn

from semckd.methods import Distiller, build_distiller, registry
from semckd.methods import base as method_base
from semckd.methods.combine import Combined

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only add contention

METHODS = ["fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd"]


# ---------------------------------------------------------------------- combinations
def _hook_count(model: nn.Module, name: str) -> int:
    return len(dict(model.named_modules())[name]._forward_hooks)


def test_combined_at_kd_counts_ce_and_kd_once() -> None:
    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("at+kd", student, teacher, ctx)
    assert isinstance(d, Combined)
    assert _hook_count(student, "layer3") == 1 and _hook_count(teacher, "layer3") == 1
    logits, losses = d(x, y)
    assert set(losses) == {"ce", "kd", "at"}
    # ce and kd come from the first member (AT: 1·CE + 1·KD), not from KD's (set to 0.1/0.9 below)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert losses["kd"].item() == pytest.approx(method_base.kd_loss(logits, teacher(x)).item(), rel=1e-5)
    at_alone = build_distiller("at", student, teacher, ctx)
    _, alone = at_alone(x, y)
    assert losses["at"].item() == pytest.approx(alone["at"].item(), rel=1e-6)
    at_alone.remove_taps()
    d.remove_taps()
    d = build_distiller("kd+at", student, teacher, ctx, {"at": {"beta": 10.0},
                                                         "kd": {"ce_weight": 0.1, "kd_weight": 0.9}})
    logits, losses = d(x, y)
    assert losses["ce"].item() == pytest.approx(0.1 * F.cross_entropy(logits, y).item(), rel=1e-6)
    assert losses["at"].item() == pytest.approx(alone["at"].item() / 100, rel=1e-5)
    # no member observes or tracks the epoch: the combination's hooks are the base class's no-ops
    assert not d.observes and d.pop_summary() == {} and "epoch" not in d.extras_state_dict()


def test_combined_errors() -> None:
    student, teacher, x, y, ctx = make_pair()
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_distiller("at+nope", student, teacher, ctx)
    with pytest.raises(ValueError, match="has no option 'gamma'"):
        build_distiller("at+kd", student, teacher, ctx, {"at": {"gamma": 1}})
    with pytest.raises(ValueError, match="keyed by method name"):
        build_distiller("at+kd", student, teacher, ctx, {"beta": 1})
    with pytest.raises(ValueError, match="listed twice"):
        build_distiller("at+at", student, teacher, ctx)
    with pytest.raises(ValueError, match=r"keyed by method name \(at, kd\).*got 'sp'"):
        build_distiller("at+kd", student, teacher, ctx, {"sp": {}})
    with pytest.raises(ValueError, match="option 'beta' expects a number >= 0, got -1"):
        build_distiller("at+kd", student, teacher, ctx, {"at": {"beta": -1}})
    with pytest.raises(ValueError, match="needs a teacher"):
        build_distiller("at+kd", student, None, ctx)
    with pytest.raises(ValueError, match="same layers"):
        build_distiller("at+sp", student, teacher, ctx, {"at": {"student_layers": ["layer3"]},
                                                         "sp": {"student_layers": ["layer2"]}})


class _ForwardChanger(Distiller):
    name = "_test_forward"

    def forward(self, images, targets, index=None):  # pragma: no cover - never built
        return super().forward(images, targets, index)


class _Extra(Distiller):
    """A stand-in member with every optional hook and a term named like AT's."""

    name = "_test_extra"

    def __init__(self, student, teacher, ctx, *, tied: bool = False, **kw) -> None:
        super().__init__(student, teacher, ctx, **kw)
        self.seen: list = []
        self.scale = nn.Parameter(torch.ones(()))

    def distill_losses(self, s, t, targets, index):
        return {"at": self.scale * s.logits.pow(2).mean(), "own": s.logits.mean() * 0}

    def on_epoch_start(self, epoch: int) -> None:
        self.seen.append(("epoch", epoch))

    def observe(self, images, targets) -> None:
        self.seen.append(("observe", len(images)))

    def pop_summary(self) -> dict:
        return {"attention": [[1.0]], "count": len(self.seen)}

    @classmethod
    def needs_full_batches(cls, options) -> bool:
        return bool(options.get("tied"))


class _Extra2(_Extra):
    name = "_test_extra2"


def test_combined_rejects_forward_changers_and_merges_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._METHODS, _ForwardChanger.name, _ForwardChanger)
    monkeypatch.setitem(registry._METHODS, _Extra.name, _Extra)
    monkeypatch.setitem(registry._METHODS, _Extra2.name, _Extra2)
    student, teacher, x, y, ctx = make_pair()
    with pytest.raises(ValueError, match="changes the forward pass"):
        build_distiller("at+_test_forward", student, teacher, ctx)
    assert registry.get_method("simkd").forward is not Distiller.forward
    with pytest.raises(ValueError, match="cannot be combined"):
        build_distiller("at+simkd", student, teacher, ctx)

    d = build_distiller("at+_test_extra+dkd", student, teacher, ctx, {"_test_extra": {"tied": True}})
    _, losses = d(x, y)
    assert set(losses) == {"ce", "kd", "at_at", "_test_extra_at", "own", "dkd"}
    assert d.fixed_batch_size == ctx.batch_size  # one member tied to the batch size ties the combination
    d.on_epoch_start(10)
    assert d.parts["dkd"].epoch.item() == 10 and d.parts["_test_extra"].seen == [("epoch", 10)]
    d.observe(x, y)
    assert d.pop_summary() == {"attention": [[1.0]], "count": 2}
    assert any(p is d.parts["_test_extra"].scale for p in d.trainable_parameters())
    d.remove_taps()
    d = build_distiller("_test_extra+_test_extra2", student, teacher, ctx)
    assert set(d.pop_summary()) == {"_test_extra_attention", "_test_extra_count", "_test_extra2_attention",
                                    "_test_extra2_count"}
    d.remove_taps()
    assert d.fixed_batch_size is None  # no member declares needs_full_batches


def test_combined_state_dict_round_trips_and_trains() -> None:
    student, teacher, x, y, ctx = make_pair()
    d = build_distiller("vid+cc+dkd+fitnet", student, teacher, ctx)
    sd = d.extras_state_dict()
    assert sd and not any({"student", "teacher"} & set(k.split(".")) for k in sd)
    assert {k.split(".")[1] for k in sd} == {"vid", "cc", "dkd", "fitnet"}
    assert "parts.dkd.epoch" in sd and any(k.startswith("parts.cc.embed_t.") for k in sd)
    trainable = [id(p) for p in d.trainable_parameters()]
    extras = [id(p) for k, p in d.named_parameters() if d._is_extra(k)]
    assert len(trainable) == len(set(trainable))  # student params are shared by all members, listed once
    assert set(trainable) == {id(p) for p in student.parameters()} | set(extras)
    d.on_epoch_start(20)
    totals, grads = train_few_steps(d, x, y)
    assert totals[-1] < totals[0]
    assert all(g is not None for g in grads.values())
    d.eval()
    _, before = d(x, y)
    sd = {k: v.clone() for k, v in d.extras_state_dict().items()}
    d.remove_taps()
    torch.manual_seed(123)  # fresh extras differ until loaded
    d2 = build_distiller("vid+cc+dkd+fitnet", student, teacher, ctx)
    d2.eval()
    _, fresh = d2(x, y)
    assert fresh["vid"].item() != pytest.approx(before["vid"].item())
    d2.load_extras_state_dict(sd)
    _, after = d2(x, y)
    for k in before:
        assert after[k].item() == pytest.approx(before[k].item(), rel=1e-6), k
    with pytest.raises(ValueError, match="does not match"):
        d2.load_extras_state_dict({k: v for k, v in sd.items() if "vid" not in k})
