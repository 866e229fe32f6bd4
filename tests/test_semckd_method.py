"""SemCKDDistiller: sizing from probed features, layer choice, training, attention logging, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semckd.interop import official_state_dict
from semckd.methods import BuildContext, build_distiller, method_options
from semckd.methods.semckd import SemCKDDistiller
from semckd.models import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads; restored afterwards for other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyNet(nn.Module):
    """Zoo-like: a stem and two stages declared in ``stage_names`` (stem first), ``head_name`` = fc."""

    def __init__(self, width: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                                    nn.BatchNorm2d(4 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.stem_name = "stem"
        self.stage_names = ["stem", "stage1", "stage2"]
        self.head_name = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1))


B = 8


def make(mode: str = "faithful", batch_size: int = B, seed: int = 0, **opts):
    torch.manual_seed(seed)
    student, teacher = TinyNet(4), TinyNet(6)
    x = torch.randn(batch_size, 1, 8, 8)
    ctx = BuildContext(example_input=x, batch_size=batch_size, num_classes=5, num_samples=100)
    return build_distiller("semckd", student, teacher, ctx, {"mode": mode, **opts}), x


def test_defaults_are_the_authors_recipe() -> None:
    opts = method_options("semckd")
    assert (opts["ce_weight"], opts["kd_weight"], opts["temperature"], opts["beta"]) == (1.0, 1.0, 4.0, 400.0)
    assert (opts["mode"], opts["factor"]) == ("faithful", 4)


def test_sized_from_probed_stages_after_the_stem() -> None:
    d, _ = make()
    assert isinstance(d, SemCKDDistiller)
    assert d.semckd.student_channels == [8, 16] and d.semckd.teacher_channels == [12, 24]
    assert d.semckd.batch_size == B and d.fixed_batch_size == B
    assert d.semckd.query[0].linear1.in_features == B and d.semckd.query[0].linear2.out_features == B // 4
    explicit, _ = make(student_layers=["stem", "stage2"], teacher_layers=["stage2"])
    assert explicit.semckd.student_channels == [4, 16] and explicit.semckd.teacher_channels == [24]
    free, _ = make(mode="batch_free", factor=2)
    assert free.fixed_batch_size is None and free.semckd.mode == "batch_free"
    assert free.semckd.query[0].linear2.out_features == B // 2


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="option 'mode' expects one of faithful, batch_free, got 'loose'"):
        make(mode="loose")
    with pytest.raises(ValueError, match="no option 'alpha'"):
        make(alpha=1.0)
    with pytest.raises(ValueError, match="batch_size=2, factor=4"):
        make(batch_size=2)


def test_training_steps_decrease_the_loss() -> None:
    d, x = make()
    y = torch.randint(0, 5, (B,), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(d.trainable_parameters(), lr=3e-3)
    assert not ({id(p) for p in d.teacher.parameters()} & {id(p) for p in d.trainable_parameters()})
    assert any(p is d.semckd.query[0].linear1.weight for p in d.trainable_parameters())
    history = []
    for _ in range(15):
        logits, losses = d(x, y)
        assert set(losses) == {"ce", "kd", "semckd"} and logits.shape == (B, 5)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((total.item(), losses["semckd"].item()))
    assert history[-1][0] < 0.8 * history[0][0]
    assert history[-1][1] < history[0][1]


def test_semckd_term_is_beta_times_the_criterion() -> None:
    d, x = make(beta=7.0)
    d.eval()  # deterministic: BN running statistics everywhere
    y = torch.zeros(B, dtype=torch.long)
    _, losses = d(x, y)
    s, t = d.student_forward(x), d.teacher_forward(x)
    raw, _ = d.semckd(*d.layers(s, t))
    torch.testing.assert_close(losses["semckd"], 7.0 * raw)


def test_faithful_forward_rejects_partial_batch_batch_free_takes_it() -> None:
    d, x = make()
    with pytest.raises(ValueError, match="drop the last partial batch"):
        d(x[:3], torch.zeros(3, dtype=torch.long))
    free, x = make(mode="batch_free")
    _, losses = free(x[:3], torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(losses["semckd"])


def test_observe_and_pop_summary() -> None:
    d, x = make()
    d.eval()
    assert d.pop_summary() == {}
    d.observe(x[:5], None)  # a partial batch faithful mode cannot take: skipped
    assert d.pop_summary() == {}
    x2 = torch.randn(B, 1, 8, 8)
    with torch.no_grad():
        d.observe(x, None)
        d.observe(x2, None)
    summary = d.pop_summary()
    att = summary["attention"]
    assert isinstance(att, list) and len(att) == 2 and all(isinstance(r, list) and len(r) == 2 for r in att)
    assert all(isinstance(v, float) for r in att for v in r)
    assert all(abs(sum(r) - 1.0) < 1e-5 for r in att)  # mean of per-sample softmax rows
    with torch.no_grad():
        a1 = d.semckd.attention(*d.layers(d.student_forward(x), d.teacher_forward(x)))
        a2 = d.semckd.attention(*d.layers(d.student_forward(x2), d.teacher_forward(x2)))
    torch.testing.assert_close(torch.tensor(att, dtype=torch.float64), torch.cat([a1, a2]).mean(0).double(),
                               rtol=0, atol=1e-6)
    assert d.pop_summary() == {}  # popped: the next epoch starts empty
    free, x = make(mode="batch_free")
    free.eval()
    free.observe(x[:3], None)
    assert len(free.pop_summary()["attention"]) == 2


def test_extras_state_round_trip() -> None:
    d, x = make(seed=0)
    extras = d.extras_state_dict()
    assert extras and all(k.startswith("semckd.") for k in extras)
    assert "semckd.projectors.1.1.4.running_var" in extras
    other, _ = make(seed=1)
    other.load_extras_state_dict(extras)
    for k, v in other.extras_state_dict().items():
        assert torch.equal(v, extras[k])
    official = official_state_dict(d.semckd)
    assert "regressor11.regressor.6.weight" in official


def test_zoo_resnet8x4_from_resnet32x4_uses_the_authors_layers() -> None:
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", num_classes=10), create_model("resnet32x4", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    d = build_distiller("semckd", student, teacher, BuildContext(x, 4, 10, 100), {})
    # the authors' feat[1:-1]: layer1..layer3 outputs (the 32-channel stem and the pooled vector excluded)
    assert d.semckd.student_channels == [64, 128, 256] and d.semckd.teacher_channels == [64, 128, 256]
    s, t = d.probe(x)
    assert [tuple(f.shape[1:]) for f in d.layers(s, t)[1]] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]


def test_beta_warmup_ramps_the_feature_term_and_resumes() -> None:
    plain, x = make(seed=3)
    warm, _ = make(seed=3, beta_warmup=4)
    assert opts_default_has_no_epoch_buffer(plain)
    y = torch.randint(0, 5, (B,))
    plain.eval()
    warm.eval()  # BN in eval: both see identical features
    ref = plain(x, y)[1]["semckd"]
    for epoch, factor in ((1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)):
        warm.on_epoch_start(epoch)
        assert torch.allclose(warm(x, y)[1]["semckd"], factor * ref, rtol=1e-6)
    warm.on_epoch_start(2)
    again, _ = make(seed=3, beta_warmup=4)
    again.load_extras_state_dict(warm.extras_state_dict())  # a resumed run continues the ramp
    assert again.beta_factor().item() == pytest.approx(0.5)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="beta_warmup"):
            make(beta_warmup=bad)


def opts_default_has_no_epoch_buffer(d) -> bool:
    """Without the ramp the state is unchanged, so checkpoints written before the option still load."""
    return "epoch" not in d.extras_state_dict() and d.beta_factor() == 1.0


def test_torch_compile_option_reaches_the_criterion() -> None:
    """``--method-args torch_compile=true`` turns the criterion's compile on; the default leaves it off
    and the state layout is the same either way (checkpoints move between the two)."""
    plain, _ = make(seed=3)
    comp, _ = make(seed=3, torch_compile=True)
    assert plain.semckd.torch_compile is False and comp.semckd.torch_compile is True
    assert plain.state_dict().keys() == comp.state_dict().keys()
