"""FeatureTap / discover_stages / unwrap: what distillation methods read from a network's insides."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from semckd.features import FeatureTap, discover_stages, unwrap
from semckd.models import create_model


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------ manual forwards, module by module
def _manual_resnet8(m: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    f0 = F.relu(m.bn1(m.conv1(x)))
    f1 = m.layer1(f0)
    f2 = m.layer2(f1)
    f3 = m.layer3(f2)
    return [f0, f1, f2, f3], f3.mean(dim=(2, 3))


def _manual_vgg8(m: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    feats = []
    for i in range(5):
        for layer in getattr(m, f"block{i}"):  # conv, BN, ReLU, ..., conv, BN
            x = layer(x)
        x = F.relu(x)
        feats.append(x)
        if i < 3:
            x = F.max_pool2d(x, 2, ceil_mode=True)
    return feats, x.mean(dim=(2, 3))


def _manual_mobilenetv2(m: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    x = m.conv1(x)
    feats = [x]
    for i, group in enumerate(m.blocks):
        x = group(x)
        if i in (1, 2, 4, 6):
            feats.append(x)
    return feats, m.conv2(x).mean(dim=(2, 3))


def _manual_wrn(m: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    f0 = m.conv1(x)
    f1 = m.block1(f0)
    f2 = m.block2(f1)
    f3 = m.block3(f2)
    return [f0, f1, f2, f3], F.relu(m.bn1(f3)).mean(dim=(2, 3))


MANUAL = {"resnet8": _manual_resnet8, "vgg8": _manual_vgg8, "mobilenetv2": _manual_mobilenetv2,
          "wrn_16_1": _manual_wrn}


@pytest.mark.parametrize("name", sorted(MANUAL))
@pytest.mark.parametrize("in_ch,size", [(3, 32), (1, 28)])
def test_tap_matches_manual_forward(name: str, in_ch: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_ch).eval()
    x = torch.randn(2, in_ch, size, size)
    with torch.no_grad():
        ref_feats, ref_emb = MANUAL[name](model, x)
        with FeatureTap(model, input_of=[model.head_name]) as tap:
            logits = model(x)
            feats, (emb,) = tap.features, tap.inputs
        plain = model(x)
    assert len(feats) == len(ref_feats) == len(model.stage_names)
    for got, want in zip(feats, ref_feats, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(emb, ref_emb)
    assert torch.equal(logits, plain)  # taps observe, they never change the output
    assert _no_hooks(model)


def test_features_carry_gradients_unless_detached() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(model) as live:
        model(x)
        feats = live.features
    assert all(f.requires_grad for f in feats)
    feats[1].pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.layer3[0].conv1.weight.grad is None  # deeper than the tapped stage: untouched

    with FeatureTap(model, input_of=["fc"], detach=True) as frozen:
        logits = model(x)
        assert logits.requires_grad
        assert not any(f.requires_grad for f in frozen.features + frozen.inputs)


def test_context_manager_and_remove_leave_no_hooks() -> None:
    model = create_model("shufflenetv2", num_classes=10)
    assert _no_hooks(model)
    with FeatureTap(model, input_of=[model.head_name]) as tap:
        assert not _no_hooks(model)
        model(torch.randn(2, 3, 32, 32))
    assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="did not run"):
        tap.features  # noqa: B018 - activations are dropped with the hooks
    tap.remove()  # idempotent

    tap = FeatureTap(model)
    other = FeatureTap(model, ["layer1"])  # two taps on one model do not interfere
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(tap.features[1], other.features[0])
    tap.remove()
    other.remove()
    assert _no_hooks(model)


def test_module_that_did_not_run_is_reported_not_stale() -> None:
    model = create_model("vgg8", num_classes=10).eval()
    with torch.no_grad(), FeatureTap(model, ["pool3", "act4"]) as tap:
        model(torch.randn(1, 3, 64, 64))  # pool3 runs for large maps only
        assert [f.shape[-1] for f in tap.features] == [4, 4]
        model(torch.randn(1, 3, 32, 32))
        with pytest.raises(RuntimeError, match="'pool3' did not run"):
            tap.features  # noqa: B018


def test_autocast_bfloat16() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with FeatureTap(model, input_of=["fc"]) as tap:
            model(x)
            ref = tap.features + tap.inputs
        with torch.autocast("cpu", dtype=torch.bfloat16), FeatureTap(model, input_of=["fc"]) as tap:
            logits = model(x)
            low = tap.features + tap.inputs
    assert logits.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in low)
    for got, want in zip(low, ref, strict=True):
        assert got.shape == want.shape
        assert (got.float() - want).abs().max() <= 0.05 * want.abs().max() + 0.05


def test_distributed_data_parallel_names_are_unwrapped(tmp_path) -> None:
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model("resnet8", num_classes=10)
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model
        x = torch.randn(2, 3, 32, 32)
        with FeatureTap(ddp, input_of=["fc"]) as by_default, FeatureTap(ddp, ["module.layer2"]) as prefixed:
            logits = ddp(x)
            assert by_default.names == model.stage_names  # no "module." prefix
            assert prefixed.names == ["layer2"]  # names copied from ddp.named_modules() still resolve
            assert torch.equal(prefixed.features[0], by_default.features[2])
            # gradients flow through tapped features under DDP
            (logits.sum() + by_default.features[-1].mean()).backward()
        assert model.conv1.weight.grad is not None
        assert _no_hooks(model)
        model.eval()
        with torch.no_grad():
            ref_feats, ref_emb = _manual_resnet8(model, x)
            with FeatureTap(ddp, input_of=["fc"]) as tap:
                ddp(x)
                for got, want in zip(tap.features, ref_feats, strict=True):
                    torch.testing.assert_close(got, want)
                torch.testing.assert_close(tap.inputs[0], ref_emb)
        assert discover_stages(ddp, x) == ["layer1", "layer2", "layer3"]
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_unwrap_torch_compile_wrapper() -> None:
    model = create_model("resnet8", num_classes=10)
    compiled = torch.compile(model)  # wrapping is lazy: nothing is compiled until it is called
    assert unwrap(compiled) is model
    tap = FeatureTap(compiled, ["_orig_mod.layer1"])
    assert tap.names == ["layer1"]
    tap.remove()


# ------------------------------------------------------------------ models the zoo does not know
class _Block(nn.Module):
    """torchvision-style basic block (one ReLU module reused twice)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyTorchvisionResNet(nn.Module):
    """Same layout as torchvision's ResNet, two stages, no stage_names/head_name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_Block(8, 8, 1), _Block(8, 8, 1))
        self.layer2 = nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_discover_stages_on_foreign_model(mode: str) -> None:
    torch.manual_seed(0)
    model = TinyTorchvisionResNet()
    model.train(mode != "eval")
    if mode == "mixed":
        model.bn1.eval()  # e.g. a frozen stem BN inside a model that is training
    modes = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)

    stages = discover_stages(model, x)

    # last module at each resolution: stem ReLU (16×16), layer1 (8×8; after maxpool), layer2 (4×4)
    assert stages == ["relu", "layer1", "layer2"]
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())  # BN stats untouched
    assert _no_hooks(model)
    with torch.no_grad(), FeatureTap(model, stages, input_of=["fc"]) as tap:
        model.eval()(x)
        assert [tuple(f.shape[1:]) for f in tap.features] == [(8, 16, 16), (8, 8, 8), (16, 4, 4)]
        assert tap.inputs[0].shape == (2, 16)


def test_discover_stages_agrees_with_zoo_stage_names() -> None:
    # on a zoo model the discovered stages are the zoo's stages at distinct resolutions
    model = create_model("resnet8", num_classes=10)
    found = discover_stages(model, torch.randn(1, 3, 32, 32))
    assert found == ["layer1", "layer2", "layer3"]
    assert set(found) <= set(model.stage_names)


def test_discover_stages_without_feature_maps() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="no 4-D feature maps"):
        discover_stages(mlp, torch.randn(2, 3, 2, 2))


def test_wrong_names_fail_clearly() -> None:
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(ValueError, match=r"no module named 'layer9' in CifarResNet.*named_modules.*layer1"):
        FeatureTap(model, ["layer1", "layer9"])
    with pytest.raises(ValueError, match="no module named 'head'"):
        FeatureTap(model, input_of=["head"])
    assert _no_hooks(model)  # a failed tap registers nothing
    with pytest.raises(ValueError, match="declares no stage_names.*discover_stages"):
        FeatureTap(TinyTorchvisionResNet())
