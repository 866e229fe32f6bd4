"""A user's own model, unedited: layers found automatically, named in any form, loaded by import path.

The models live in a module written to a temporary folder (``tmpmod.py``), exactly as a user's file
would: a plain ``nn.Sequential`` CNN and two torchvision-style networks (ResNet naming
``conv1 … layer4/fc``, VGG naming ``features/avgpool/classifier``), none declaring ``stage_names`` or
``head_name`` and none registered.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from semckd.engine import _check_method_args
from semckd.features import FeatureTap, discover_head, model_layout
from semckd.methods import BuildContext, build_distiller
from semckd.models import create_model

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")

MODULE = textwrap.dedent('''
    """A user's models: plain torch, nothing semckd-specific."""
    import torch
    from torch import nn


    def sequential(num_classes, in_channels=1, width=8):
        w = width
        return nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))


    def wide(num_classes, in_channels=1):
        return sequential(num_classes, in_channels, width=12)


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)  # called twice per block, as in torchvision
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.down is None else self.down(x)))


    class ResNetish(nn.Module):
        """torchvision ResNet naming."""

        def __init__(self, num_classes=1000, in_channels=3, width=4):
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(Block(w, w, 1))
            self.layer2 = nn.Sequential(Block(w, 2 * w, 2))
            self.layer3 = nn.Sequential(Block(2 * w, 4 * w, 2))
            self.layer4 = nn.Sequential(Block(4 * w, 8 * w, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(8 * w, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))


    def resnetish(num_classes, in_channels=3):
        return ResNetish(num_classes, in_channels)


    class VGGish(nn.Module):
        """torchvision VGG naming: features, an adaptive avgpool that is not 1x1, an MLP classifier."""

        def __init__(self, num_classes=1000, in_channels=1, width=8):
            super().__init__()
            w = width
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(w, 2 * w, 3, 1, 1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.ReLU())
            self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
            self.classifier = nn.Sequential(nn.Linear(8 * w, 16), nn.ReLU(), nn.Linear(16, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


    def vggish(num_classes):  # no in_channels parameter: called without it
        return VGGish(num_classes)


    def not_a_model(num_classes):
        return 42


    def no_classes():
        return sequential(10)


    NOT_CALLABLE = 3
''')

SEQ_STAGES = ["1", "3", "5"]  # the ReLU after each conv: 28×28, 14×14, 7×7
RES_STAGES = ["relu", "layer1", "layer2", "layer3", "layer4"]  # stem 28, then 14, 7, 4, 2
VGG_STAGES = ["features.2", "features.6", "features"]  # 28, 14, 7; the 2×2 adaptive pool is no stage


@pytest.fixture(scope="module")
def mod_dir(tmp_path_factory) -> Path:
    """``tmpmod.py`` (and an installed-package entry point ``tmp_ep_net``) importable in this process."""
    d = tmp_path_factory.mktemp("own")
    (d / "tmpmod.py").write_text(MODULE)
    (d / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    info = d / "tmp_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[semckd.models]\ntmp_ep_net = tmpmod:wide\n")
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    for name in ("tmpmod", "broken"):
        sys.modules.pop(name, None)


def mk(factory: str) -> nn.Module:
    """A model of ``tmpmod`` for 1-channel 28×28 images and 10 classes, built by the user's own code."""
    import tmpmod

    fn = getattr(tmpmod, factory)
    return fn(10) if factory == "vggish" else fn(10, in_channels=1)


def _ctx(batch: int = 8) -> BuildContext:
    return BuildContext(example_input=torch.randn(batch, 1, 28, 28), batch_size=batch, num_classes=10,
                        num_samples=64)


def _train_step(d: nn.Module, ctx: BuildContext) -> dict[str, torch.Tensor]:
    logits, losses = d(ctx.example_input, torch.randint(0, 10, (ctx.batch_size,)),
                       torch.arange(ctx.batch_size))
    total = sum(losses.values())
    total.backward()
    assert logits.shape == (ctx.batch_size, 10)
    assert torch.isfinite(total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    return losses


# ---------------------------------------------------------------------- Python API
@pytest.mark.parametrize("factory, stages, head", [
    ("sequential", SEQ_STAGES, "8"),
    ("resnetish", RES_STAGES, "fc"),
    ("vggish", VGG_STAGES, "classifier.2"),
])
def test_layout_is_discovered_from_a_dry_run(mod_dir, factory, stages, head) -> None:
    model = mk(factory)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model_layout(model, torch.randn(4, 1, 28, 28)) == (stages, head)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_zoo_models_keep_their_declared_layout() -> None:
    model = create_model("resnet8", num_classes=10)
    assert model_layout(model, torch.randn(2, 3, 32, 32)) == (model.stage_names, model.head_name)


def test_head_is_the_last_linear_to_run_not_the_last_registered() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)  # registered first, runs last
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.proj(self.body(x).mean((2, 3))))

    assert model_layout(Odd(), torch.randn(2, 1, 8, 8))[1] == "fc"
    assert discover_head(Odd()) == "proj"  # without a dry run: registration order


@pytest.mark.parametrize("method", ["semckd", "fitnet"])
@pytest.mark.parametrize("student, teacher", [("sequential", "wide"), ("vggish", "resnetish")])
def test_distil_own_models_with_no_options(mod_dir, method, student, teacher) -> None:
    torch.manual_seed(0)
    s, t = mk(student), mk(teacher)
    ctx = _ctx()
    d = build_distiller(method, s, t, ctx)
    losses = _train_step(d, ctx)
    assert method in losses
    assert d.s_tap.names == model_layout(s, ctx.example_input)[0]
    assert d.t_tap.names == model_layout(t, ctx.example_input)[0]
    if method == "semckd":  # discovered layers are all used (no stem dropped)
        so, to = d.probe(ctx.example_input)
        assert [len(f) for f in d.layers(so, to)] == [len(so.feats), len(to.feats)]
    d.remove_taps()


def test_head_name_options(mod_dir) -> None:
    _check_method_args("semckd", {"head_name": "8"})  # was: "method 'semckd' has no option 'head_name'"
    _check_method_args("semckd+fitnet", {"semckd": {"student_head": "8", "teacher_head": "fc"}})
    ctx = _ctx()
    s, t = mk("sequential"), mk("wide")
    d = build_distiller("fitnet", s, t, ctx, {"head_name": 8})  # both heads; stages still discovered
    assert (d.s_head_name, d.t_head_name) == ("8", "8") and d.s_tap.names == SEQ_STAGES
    t = mk("resnetish")
    d = build_distiller("kd", s, t, ctx, {"student_head": "8", "teacher_head": "fc"})
    assert (d.s_head_name, d.t_head_name) == ("8", "fc")
    _train_step(d, ctx)
    # the head is the module whose input is the embedding: any module may be named
    d = build_distiller("kd", s, t, ctx, {"student_head": "7", "teacher_head": "avgpool"})
    assert d.student_forward(ctx.example_input).embedding.shape == (8, 32)


def test_a_declared_head_alone_gets_discovered_stages(mod_dir) -> None:
    s, t = mk("sequential"), mk("wide")
    s.head_name = t.head_name = "8"  # was: "Sequential declares no stage_names"
    ctx = _ctx()
    d = build_distiller("semckd", s, t, ctx)
    assert d.s_tap.names == d.t_tap.names == SEQ_STAGES
    _train_step(d, ctx)


def test_layer_names_of_any_form(mod_dir) -> None:
    s = mk("sequential")
    v = mk("vggish")
    r = mk("resnetish")
    assert FeatureTap(s, [1, 3, 5]).names == ["1", "3", "5"]  # was: AttributeError
    assert FeatureTap(s, "3").names == ["3"]
    assert FeatureTap(s, [-4]).names == ["5"]  # negative: counted from the end, like nn.Sequential
    assert FeatureTap(v, ["features[2]", "features.6", " features "]).names == VGG_STAGES
    assert FeatureTap(r, ["layer2.0.conv1", "module.layer3"]).names == ["layer2.0.conv1", "layer3"]
    ctx = _ctx()
    d = build_distiller("semckd+fitnet", s, mk("wide"), ctx,
                        {"semckd": {"student_layers": [1, 3, 5], "teacher_layers": [3, "5"]}})
    assert d.s_tap.names == ["1", "3", "5"] and d.t_tap.names == ["3", "5"]
    _train_step(d, ctx)
    with pytest.raises(ValueError, match=r"no module named 'layer9' in ResNetish \(did you mean 'layer\d'\?\)"
                                         r"; use a name from model\.named_modules\(\) \(top level: conv1, "
                                         r"bn1, relu, maxpool, layer1, .*, fc; nested as dotted paths, "
                                         r"e\.g\. layer1\.0\) or a top-level index 0\.\.9"):
        FeatureTap(r, ["layer9"])
    with pytest.raises(ValueError, match=r"no module named 9 in Sequential; .*top level: 0, 1, 2.* 0\.\.8"):
        FeatureTap(s, [1, 9])
