"""Model zoo: shapes, parameter counts (the architecture spec), tap metadata, checkpoint-key layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semckd.features import FeatureTap
from semckd.models import create_model, list_models

IMAGENET = ("resnet18", "resnet34", "resnet50")

# Parameter counts at 100 classes, computed from the authors' architecture definitions
# (DefangChen/SemCKD models/, same as HobbitLong/RepDistiller). These are the specification: a model
# with a different count is a different network and cannot load the authors' checkpoints.
CIFAR100_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}
# torchvision's documented counts for 1000 classes
IMAGENET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}

# Models whose last stage (the authors' last feature) is followed by a "neck" before pooling; the
# classifier pools the neck's output, which has the last stage's resolution but not its values.
NECK = {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "mobilenetv2", "shufflenetv2"}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_zoo_is_complete() -> None:
    assert set(list_models()) >= set(CIFAR100_PARAMS) | set(IMAGENET_PARAMS)


@pytest.mark.parametrize("name", sorted(CIFAR100_PARAMS))
def test_cifar_parameter_count(name: str) -> None:
    assert n_params(create_model(name, num_classes=100)) == CIFAR100_PARAMS[name]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_parameter_count(name: str) -> None:
    assert n_params(create_model(name, num_classes=1000)) == IMAGENET_PARAMS[name]


def test_in_channels_and_classes_change_only_stem_and_head() -> None:
    # 1 input channel removes 2 of every 3 stem weights; 10 classes removes 90 rows (+bias) of the head
    base = n_params(create_model("resnet8", num_classes=100, in_channels=3))
    small = n_params(create_model("resnet8", num_classes=10, in_channels=1))
    assert base - small == 2 * 16 * 3 * 3 + 90 * (64 + 1)


def _global_pool(model: nn.Module) -> nn.Module:
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert len(pools) == 1, "every zoo model pools exactly once, adaptively (no fixed input size)"
    return pools[0]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape,num_classes", [((2, 3, 32, 32), 100), ((2, 1, 28, 28), 10)])
def test_forward_stages_and_head(name: str, shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=shape[1]).eval()
    modules = dict(model.named_modules())
    assert isinstance(modules[model.head_name], nn.Linear)
    assert all(n in modules for n in model.stage_names)
    assert len(model.stage_names) >= 3

    pool_in: list[torch.Tensor] = []
    handle = _global_pool(model).register_forward_pre_hook(lambda _m, inp: pool_in.append(inp[0]))
    x = torch.randn(shape)
    with torch.no_grad(), FeatureTap(model, input_of=[model.head_name]) as tap:
        logits = model(x)
        feats, (emb,) = tap.features, tap.inputs
    handle.remove()

    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    assert all(f.dim() == 4 and f.shape[0] == 2 for f in feats)
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    assert sizes == sorted(sizes, reverse=True), f"stage resolutions must not grow: {sizes}"
    # the head's input is the pooled final map, and the last stage is at that final resolution
    (final,) = pool_in
    assert torch.allclose(emb, final.mean(dim=(2, 3)), atol=1e-5)
    assert feats[-1].shape[-2:] == final.shape[-2:]
    if name not in NECK:
        assert torch.equal(feats[-1], final)
    assert emb.shape == (2, modules[model.head_name].in_features)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*resnet8x4.*wrn_40_2"):
        create_model("resnet9000")


def test_names_are_case_insensitive() -> None:
    assert isinstance(create_model("WRN_16_1", num_classes=10), nn.Module)


def test_bad_depth_is_rejected() -> None:
    from semckd.models.cifar_resnet import CifarResNet
    from semckd.models.wrn import WideResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(9, [16, 16, 32, 64])
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(17, 1)


def test_vgg_pools_before_block4_only_for_large_maps() -> None:
    # the authors' rule: 32×32 keeps a 4×4 map in block4, 64×64 pools it from 8×8 to 4×4
    model = create_model("vgg8", num_classes=10).eval()
    with torch.no_grad(), FeatureTap(model) as tap:
        model(torch.randn(1, 3, 32, 32))
        assert [f.shape[-1] for f in tap.features] == [32, 16, 8, 4, 4]
        model(torch.randn(1, 3, 64, 64))
        assert [f.shape[-1] for f in tap.features] == [64, 32, 16, 8, 4]
        model(torch.randn(1, 3, 28, 28))  # ceil-mode pools keep the odd border
        assert [f.shape[-1] for f in tap.features] == [28, 14, 7, 4, 4]


# A sample of the authors' checkpoint keys (name → shape at 100 classes): their released teachers and
# students must load strictly, so names and shapes are part of the specification.
AUTHOR_KEYS = {
    "resnet32x4": {"conv1.weight": (32, 3, 3, 3), "layer1.0.downsample.0.weight": (64, 32, 1, 1),
                   "layer3.4.bn2.running_var": (256,), "fc.weight": (100, 256)},
    "resnet8": {"layer2.0.downsample.1.weight": (32,), "fc.bias": (100,)},
    "wrn_40_2": {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "block3.layer.5.conv2.weight":
                 (128, 128, 3, 3), "bn1.weight": (128,), "fc.weight": (100, 128)},
    "vgg13": {"block0.0.weight": (64, 3, 3, 3), "block0.4.running_mean": (64,),
              "block4.3.weight": (512, 512, 3, 3), "classifier.weight": (100, 512)},
    "vgg8": {"block4.1.num_batches_tracked": (), "block4.0.bias": (512,)},
    "mobilenetv2": {"conv1.0.weight": (16, 3, 3, 3), "blocks.1.1.conv.3.weight": (72, 1, 3, 3),
                    "blocks.6.0.conv.7.weight": (160,), "conv2.0.weight": (1280, 160, 1, 1),
                    "classifier.0.weight": (100, 1280)},
    "shufflenetv1": {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1),
                     "layer1.0.conv3.weight": (216, 18, 1, 1), "layer3.3.bn3.bias": (960,),
                     "linear.weight": (100, 960)},
    "shufflenetv2": {"layer1.0.conv1.weight": (24, 1, 3, 3), "layer1.0.conv5.weight": (58, 58, 1, 1),
                     "layer2.7.conv2.weight": (116, 1, 3, 3), "conv2.weight": (1024, 464, 1, 1),
                     "linear.weight": (100, 1024)},
}


@pytest.mark.parametrize("name", sorted(AUTHOR_KEYS))
def test_authors_checkpoint_layout(name: str) -> None:
    sd = create_model(name, num_classes=100).state_dict()
    for key, shape in AUTHOR_KEYS[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key


# torchvision resnet18: 62 parameters + 20 BNs × 3 buffers = 122 state_dict entries.
TV_RESNET18_SAMPLE = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_mean": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.running_var": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.num_batches_tracked": (),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.bn2.bias": (512,),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}
TV_RESNET50_SAMPLE = {
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),  # v1.5: the stride sits on the 3×3 conv
    "layer3.5.bn3.running_mean": (1024,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc.weight": (1000, 2048),
}


def _torchvision_resnet18_keys() -> list[str]:
    """torchvision's resnet18 key list, spelled out from its documented layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}."
            keys += [p + "conv1.weight"] + [p + f"bn1.{k}" for k in bn]
            keys += [p + "conv2.weight"] + [p + f"bn2.{k}" for k in bn]
            if block == 0 and layer > 1:
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{k}" for k in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_matches_torchvision_keys() -> None:
    sd = create_model("resnet18", num_classes=1000).state_dict()
    assert len(sd) == 122
    assert list(sd) == _torchvision_resnet18_keys()  # same names, same order
    for key, shape in TV_RESNET18_SAMPLE.items():
        assert tuple(sd[key].shape) == shape, key


def test_resnet50_matches_torchvision_keys() -> None:
    sd = create_model("resnet50", num_classes=1000).state_dict()
    assert len(sd) == 320  # 161 parameters + 53 BNs × 3 buffers
    for key, shape in TV_RESNET50_SAMPLE.items():
        assert tuple(sd[key].shape) == shape, key


def test_torchvision_style_state_dict_loads_strictly_and_runs() -> None:
    # a weight file keyed like torchvision's (built here from the spelled-out key list) loads strictly
    src = create_model("resnet18", num_classes=1000)
    values = src.state_dict().values()
    weights = {k: v.clone() for k, v in zip(_torchvision_resnet18_keys(), values, strict=True)}
    dst = create_model("resnet18", num_classes=1000)
    dst.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model("resnet18", num_classes=10).load_state_dict(weights, strict=True)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_resnet_stages(name: str) -> None:
    model = create_model(name, num_classes=1000).eval()
    with torch.no_grad(), FeatureTap(model) as tap:
        model(torch.randn(2, 3, 64, 64))
        feats = tap.features
    assert [f.shape[-1] for f in feats] == [16, 16, 8, 4, 2]
    width = 4 if name == "resnet50" else 1
    assert [f.shape[1] for f in feats] == [64, 64 * width, 128 * width, 256 * width, 512 * width]


@pytest.mark.parametrize("name", ["resnet8", "resnet8x4", "vgg8", "wrn_16_2", "resnet18"])
def test_preact_stages_are_the_authors_pre_relu_maps(name: str) -> None:
    """``preact_stage_names`` (ReviewKD's teacher levels): same shapes as the stages, taken before a ReLU."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    assert len(model.preact_stage_names) == len(model.stage_names)
    assert model.preact_stage_names[0] == model.stage_names[0]  # the stem is post-activation in both
    post_tap, pre_tap = FeatureTap(model), FeatureTap(model, model.preact_stage_names)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for post, pre in zip(post_tap.features[1:], pre_tap.features[1:], strict=True):
        assert pre.shape == post.shape and bool((pre < 0).any())
        if not name.startswith("wrn"):  # WRN: the group output through the next BN, not relu⁻¹ of a stage
            assert torch.allclose(torch.relu(pre), post)
    post_tap.remove()
    pre_tap.remove()
