"""ResNet-18/34/50 and EfficientNetV2-B0..B3 / S: against timm, torchvision and the published figures.

The registry-wide tests (test_contract.py, test_smp_encoder.py, test_timm_registration.py) cover these
names like every other; this file checks what is particular to them: the same features as timm's models
with the same weights, torchvision checkpoints giving torchvision's activations at every level (and its
dilated ResNet-50), the expansion taps, padding / BatchNorm-eps conventions, and the complexity figures.
"""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import Tensor, nn

from backbones import WeightsMismatchError, create_backbone, get_backbone_entry, list_backbones
from backbones._layouts import detect_layout
from backbones.complexity import count_macs, count_params
from backbones.convert import main as convert_main
from tests.backbones.weights_reference import randomize_

RESNETS = ["resnet18", "resnet34", "resnet50"]
V2_BASE = [f"efficientnet_v2_b{i}" for i in range(4)]
ATOL = 1e-5

# (our name, family options, the timm model it reproduces)
TIMM_CASES = [
    *[(name, {}, partial(timm.create_model, name)) for name in RESNETS],
    *[(name, {}, partial(timm.create_model, f"tf_efficientnetv2_b{name[-1]}")) for name in V2_BASE],
    ("efficientnet_v2_s", {}, partial(timm.create_model, "efficientnetv2_s")),
    ("efficientnet_v2_s", {"padding": "same"}, partial(timm.create_model, "tf_efficientnetv2_s")),
]
HEAVY = {"resnet50", "efficientnet_v2_s", "efficientnet_v2_b3"}


def _ids(case) -> str:
    name, options, _ = case
    return name + "".join(f"-{v}" for v in options.values())


def _assert_levels(ours: list[Tensor], ref: list[Tensor], atol: float = ATOL) -> None:
    assert [a.shape for a in ours] == [b.shape for b in ref]
    for level, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m, level=level: f"level {level}: {m}")


def test_names_and_papers():
    assert set(RESNETS + V2_BASE + ["efficientnet_v2_s"]) <= set(list_backbones())
    for name in RESNETS:
        assert get_backbone_entry(name).paper.startswith("He et al., Deep Residual Learning")
    for name in [*V2_BASE, "efficientnet_v2_s"]:
        entry = get_backbone_entry(name)
        assert entry.paper.startswith("Tan and Le, EfficientNetV2") and entry.family_options == ("padding",)


@pytest.mark.parametrize(
    ("name", "options", "build"),
    [pytest.param(*c, marks=[pytest.mark.slow] if c[0] in HEAVY else []) for c in TIMM_CASES],
    ids=[_ids(c) for c in TIMM_CASES],
)
@torch.no_grad()
def test_stage_features_equal_timm(name, options, build):
    """Same weights, same maps as timm's `features_only` model, at every output stride (timm dilates)."""
    x = torch.randn(2, 3, 67, 61)
    for output_stride in (32, 16, 8):
        ref = randomize_(build(features_only=True, output_stride=output_stride))
        ours = create_backbone(name, output_stride=output_stride, **options).eval()
        ours.model.load_state_dict(ref.state_dict())
        assert ours.feature_info.channels == tuple(ref.feature_info.channels())
        assert ours.feature_info.strides == tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
        _assert_levels(ours(x), ref(x), atol=0)


def test_padding_conventions():
    """B0-B3 are TensorFlow's nets ('same', eps 1e-3) unless asked otherwise; V2-S is torchvision's."""

    def convention(backbone):
        eps = {m.eps for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)}
        return type(backbone.model.conv_stem).__name__, eps

    assert convention(create_backbone("efficientnet_v2_b0")) == ("Conv2dSame", {1e-3})
    assert convention(create_backbone("efficientnet_v2_b0", padding="symmetric")) == ("Conv2d", {1e-5})
    assert convention(create_backbone("efficientnet_v2_s")) == ("Conv2d", {1e-5})
    assert convention(create_backbone("efficientnet_v2_s", padding="same")) == ("Conv2dSame", {1e-3})
    with pytest.raises(ValueError, match=r"padding 'valid' is not supported; choose one of"):
        create_backbone("efficientnet_v2_s", padding="valid")
    with pytest.raises(ValueError, match=r"no ImageNet weights are published for efficientnet_v2_b1 \(padding='sym"):
        create_backbone("efficientnet_v2_b1", padding="symmetric", pretrained=True)


def test_pretrained_true_asks_for_the_official_tf_weights():
    # Offline (tests/conftest.py): the message names timm's hub copy of the official V2-S checkpoint.
    with pytest.raises(RuntimeError, match=r"timm/tf_efficientnetv2_s\..*pretrained='/path/to/weights"):
        create_backbone("efficientnet_v2_s", pretrained=True)
    with pytest.raises(RuntimeError, match=r"timm/resnet18\.a1_in1k.*pretrained='/path/to/weights"):
        create_backbone("resnet18", pretrained=True)


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_refuses_expansion_clearly(name):
    with pytest.raises(ValueError, match=f"{name} has no expansion layers .*use feature_location='stage'"):
        create_backbone(name, feature_location="expansion")


# EfficientNetV2's expansion taps: stages whose first block is tapped (FusedMBConv at strides 2, 4: its
# input; MBConv at 8, 16: its 1x1 expansion), and the channels.
V2_TAPS = {
    "efficientnet_v2_b0": (16, 32, 192, 672, 1280),
    "efficientnet_v2_b1": (16, 32, 192, 672, 1280),
    "efficientnet_v2_b2": (16, 32, 224, 720, 1408),
    "efficientnet_v2_b3": (16, 40, 224, 816, 1536),
    "efficientnet_v2_s": (24, 48, 256, 960, 1280),
}


@pytest.mark.parametrize("name", sorted(V2_TAPS))
@torch.no_grad()
def test_expansion_taps_equal_hooks_on_timms_modules(name):
    output_stride = 16
    ours = create_backbone(name, feature_location="expansion", output_stride=output_stride).eval()
    timm_name = "efficientnetv2_s" if name.endswith("_s") else f"tf_efficientnetv2_b{name[-1]}"
    ref = randomize_(timm.create_model(timm_name, num_classes=0, output_stride=output_stride))
    ours.model.load_state_dict(ref.state_dict())
    assert ours.feature_info.channels == V2_TAPS[name]
    assert ours.feature_info.strides == (2, 4, 8, 16, 16)
    taps: dict[int, Tensor] = {}
    for s in (1, 2, 3, 5):  # the first block of each stage that downsamples next (timm's stage indices)
        block = ref.blocks[s][0]
        if type(block).__name__ == "EdgeResidual":  # FusedMBConv: no expansion at the input's stride
            assert block.conv_exp.stride == (2, 2)
            block.register_forward_pre_hook(lambda m, args, s=s: taps.__setitem__(s, args[0]))
        else:
            assert type(block).__name__ == "InvertedResidual"
            block.bn1.register_forward_hook(lambda m, args, out, s=s: taps.__setitem__(s, out))
    x = torch.randn(2, 3, 64, 80)
    last = ref.forward_features(x)  # conv_head + bn2 (with its activation)
    _assert_levels(ours(x), [taps[s] for s in (1, 2, 3, 5)] + [last], atol=0)


def _torchvision_resnet_levels(model: nn.Module, x: Tensor) -> list[Tensor]:
    """torchvision ResNet's stem ReLU (before the max pool) and layer1-layer4 outputs."""
    stem = model.relu(model.bn1(model.conv1(x)))
    levels = [stem, model.layer1(model.maxpool(stem))]
    for layer in (model.layer2, model.layer3, model.layer4):
        levels.append(layer(levels[-1]))
    return levels


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in RESNETS])
@torch.no_grad()
def test_torchvision_resnet_file_gives_torchvisions_features(tmp_path, name):
    torch.manual_seed(0)
    source = randomize_(getattr(tvm, name)())
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    assert detect_layout(source.state_dict()).name == "torchvision-resnet"
    x = torch.randn(2, 3, 67, 61)
    ours = create_backbone(name, pretrained=path).eval()
    _assert_levels(ours(x), _torchvision_resnet_levels(source, x))


@torch.no_grad()
def test_dilated_resnet50_equals_torchvisions_dilated_resnet(tmp_path):
    """Output stride 8 / 16 is torchvision's `replace_stride_with_dilation` (DeepLab's ResNet) with the same file."""
    torch.manual_seed(0)
    state = randomize_(tvm.resnet50()).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    x = torch.randn(1, 3, 67, 61)
    for output_stride, dilate in ((16, [False, False, True]), (8, [False, True, True])):
        source = tvm.resnet50(replace_stride_with_dilation=dilate).eval()
        source.load_state_dict(state)
        ours = create_backbone("resnet50", pretrained=path, output_stride=output_stride).eval()
        _assert_levels(ours(x), _torchvision_resnet_levels(source, x))


@torch.no_grad()
def test_torchvision_efficientnet_v2_s_file_gives_torchvisions_features(tmp_path):
    """Every stage and expansion level equals the named torchvision activation (BatchNorm eps 1e-3 applied)."""
    torch.manual_seed(0)
    source = randomize_(tvm.efficientnet_v2_s())
    path = tmp_path / "v2s.pth"
    torch.save(source.state_dict(), path)
    assert detect_layout(source.state_dict()).name == "torchvision-efficientnet_v2"
    outputs: dict[str, Tensor] = {}

    def keep(key):
        return lambda m, args, out: outputs.__setitem__(key, out.clone())

    def keep_input(key):
        return lambda m, args: outputs.__setitem__(key, args[0].clone())

    features = source.features
    for i in (1, 2, 3, 5, 6, 7):  # stage outputs (features[4] ends at stride 16 too; [5] is its last) + head
        features[i].register_forward_hook(keep(f"stage{i}"))
    features[2][0].register_forward_pre_hook(keep_input("fused2"))  # FusedMBConv: tapped at its input
    features[3][0].register_forward_pre_hook(keep_input("fused3"))
    features[4][0].block[0].register_forward_hook(keep("expand4"))  # MBConv expansion (1x1 conv + BN + SiLU)
    features[6][0].block[0].register_forward_hook(keep("expand6"))
    x = torch.randn(2, 3, 67, 61)
    source(x)
    stage = create_backbone("efficientnet_v2_s", pretrained=path).eval()
    assert {m.eps for m in stage.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    _assert_levels(stage(x), [outputs[f"stage{i}"] for i in (1, 2, 3, 5, 6)])
    expansion = create_backbone("efficientnet_v2_s", pretrained=path, feature_location="expansion").eval()
    expected = [outputs[k] for k in ("fused2", "fused3", "expand4", "expand6", "stage7")]
    _assert_levels(expansion(x), expected)
    with pytest.raises(ValueError, match=r"trained with 'symmetric' padding.*padding='same' would not"):
        create_backbone("efficientnet_v2_s", pretrained=path, padding="same")


@pytest.mark.parametrize(
    ("name", "timm_name"), [("resnet18", "resnet18"), ("efficientnet_v2_b0", "tf_efficientnetv2_b0")]
)
@torch.no_grad()
def test_timm_file_loads_at_both_locations(tmp_path, name, timm_name):
    classifier = randomize_(timm.create_model(timm_name))
    path = tmp_path / "timm.pth"
    torch.save(classifier.state_dict(), path)
    x = torch.randn(1, 3, 64, 72)
    ref = timm.create_model(timm_name, features_only=True).eval()
    ref.load_state_dict(classifier.state_dict(), strict=False)  # a features model lacks the classifier
    _assert_levels(create_backbone(name, pretrained=path).eval()(x), ref(x), atol=0)
    if name.startswith("efficientnet"):
        expansion = create_backbone(name, pretrained=path, feature_location="expansion").eval()
        torch.testing.assert_close(expansion(x)[-1], classifier.forward_features(x), rtol=0, atol=0)


def test_other_depth_or_family_is_refused_naming_it(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(tvm.resnet34().state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"(?s)does not fit resnet18.*holds the weights of resnet34"):
        create_backbone("resnet18", pretrained=path)
    with pytest.raises(WeightsMismatchError, match=r"(?s)does not fit efficientnet_v2_s.*layer1\."):
        create_backbone("efficientnet_v2_s", pretrained=path)


@torch.no_grad()
def test_grayscale_resnet_from_an_rgb_torchvision_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(randomize_(tvm.resnet18()).state_dict(), path)
    rgb = create_backbone("resnet18", pretrained=path).eval()
    mono = create_backbone("resnet18", pretrained=path, in_chans=1).eval()
    assert mono.model.conv1.weight.shape[1] == 1
    gray = torch.rand(1, 1, 48, 48)
    _assert_levels(mono(gray), rgb(gray.expand(-1, 3, -1, -1)), atol=1e-4)  # summation order differs


@pytest.mark.parametrize(
    ("name", "build", "held"),
    [("resnet18", tvm.resnet18, "resnet18"), ("efficientnet_v2_s", tvm.efficientnet_v2_s, "efficientnet_v2_s")],
)
@torch.no_grad()
def test_convert_command(tmp_path, capsys, name, build, held):
    torch.manual_seed(0)
    src, dst = tmp_path / "src.pth", tmp_path / "dst.safetensors"
    torch.save(randomize_(build()).state_dict(), src)
    assert convert_main([str(src), str(dst)]) == 0
    assert f"holds {held}" in capsys.readouterr().out
    x = torch.randn(1, 3, 64, 64)
    a = create_backbone(name, pretrained=src).eval()(x)
    b = create_backbone(name, pretrained=dst).eval()(x)  # the origin's BatchNorm eps comes along
    _assert_levels(b, a, atol=0)


# (timm classifier, input size, published params in M, published MACs in G). ResNet: torchvision's weight
# metadata (the paper's ResNet-50 row, 3.8 GFLOPs, is v1's stride-2 1x1; torchvision's and timm's v1.5 put it
# on the 3x3 conv: 4.1G). EfficientNetV2-S: the paper's Table 7 (8.8B at 384; torchvision's metadata says
# 8.366, what we count). B0-B3: the reference repository's table (google/automl efficientnetv2 README).
PUBLISHED = [
    ("resnet18", 224, 11.7, 1.8),
    ("resnet34", 224, 21.8, 3.6),
    ("resnet50", 224, 25.6, 4.1),
    ("efficientnetv2_s", 384, 21.5, 8.8),
    ("tf_efficientnetv2_b0", 224, 7.1, 0.72),
    ("tf_efficientnetv2_b1", 240, 8.1, 1.2),
    ("tf_efficientnetv2_b2", 260, 10.1, 1.7),
    ("tf_efficientnetv2_b3", 300, 14.4, 3.0),
]


@pytest.mark.parametrize(("timm_name", "size", "params", "macs"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_complexity(timm_name, size, params, macs):
    model = timm.create_model(timm_name)
    assert count_params(model) / 1e6 == pytest.approx(params, rel=0.03)
    assert count_macs(model, torch.zeros(1, 3, size, size)) / 1e9 == pytest.approx(macs, rel=0.05)


def test_torchvision_metadata_counts():
    """Our counter gives torchvision's own weight metadata (params exactly, GFLOPs to its 3 decimals)."""
    for timm_name, weights, size in [
        ("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1, 224),
        ("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1, 224),
        ("efficientnetv2_s", tvm.EfficientNet_V2_S_Weights.IMAGENET1K_V1, 384),
    ]:
        model = timm.create_model(timm_name)
        assert count_params(model) == weights.meta["num_params"]
        assert round(count_macs(model, torch.zeros(1, 3, size, size)) / 1e9, 3) == weights.meta["_ops"]
