"""The timm-wrapped inverted-residual / depthwise families: MobileNetV1/V2/V3, EfficientNet, PP-LCNet.

Checked against timm itself (same weights, same features), torchvision's SSDLite MobileNetV3 extractor
(the expansion taps), and the papers' parameter / MAC counts.
"""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv
from timm.models.efficientnet import _gen_mobilenet_v1
from torch import nn

from backbones import WeightsMismatchError, create_backbone, list_backbones
from backbones.complexity import count_macs, count_params

# (our name, width_mult or None for the default, the timm variant it reproduces)
STAGE_CASES = [
    ("mobilenet_v1", None, "mobilenetv1_100"),
    ("mobilenet_v1", 0.25, "mobilenetv1_025"),  # built with timm's generator
    ("mobilenet_v2", None, "mobilenetv2_100"),
    ("mobilenet_v2", 0.35, "mobilenetv2_035"),
    ("mobilenet_v3_large", None, "mobilenetv3_large_100"),
    ("mobilenet_v3_large", 0.75, "mobilenetv3_large_075"),
    ("mobilenet_v3_small", None, "mobilenetv3_small_100"),
    ("mobilenet_v3_small", 0.75, "mobilenetv3_small_075"),
    ("efficientnet_b0", None, "efficientnet_b0"),
    ("efficientnet_b1", None, "efficientnet_b1"),
    ("efficientnet_b2", None, "efficientnet_b2"),
    ("efficientnet_b3", None, "efficientnet_b3"),
    ("efficientnet_lite0", None, "efficientnet_lite0"),
    ("pp_lcnet", None, "lcnet_100"),
    ("pp_lcnet", 0.5, "lcnet_050"),
]

# Expansion taps at the default width: SSDLite's (TF `layer_15/expansion_output` = 576 for MobileNetV2,
# torchvision's C4 = 672 for MobileNetV3-Large, 288 for -Small), then the last 1x1 conv.
EXPANSION_CHANNELS = {
    "mobilenet_v2": (96, 144, 192, 576, 1280),
    "mobilenet_v3_large": (64, 72, 240, 672, 960),
    "mobilenet_v3_small": (16, 72, 96, 288, 576),  # stride 2: the stem (the next block has no expansion)
    "efficientnet_b0": (96, 144, 240, 672, 1280),
    "efficientnet_b1": (96, 144, 240, 672, 1280),
    "efficientnet_b2": (96, 144, 288, 720, 1408),
    "efficientnet_b3": (144, 192, 288, 816, 1536),
    "efficientnet_lite0": (96, 144, 240, 672, 1280),
}


def _kwargs(width: float | None) -> dict:
    return {} if width is None else {"width_mult": width}


def _timm_features(timm_name: str, output_stride: int, **kwargs) -> nn.Module:
    if timm_name == "mobilenetv1_025":
        return _gen_mobilenet_v1(timm_name, 0.25, features_only=True, output_stride=output_stride, **kwargs)
    return timm.create_model(timm_name, features_only=True, output_stride=output_stride, **kwargs)


@torch.no_grad()
def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so BN layers are not identities in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def _assert_same(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float = 1e-5) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_names_are_registered():
    expected = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "pp_lcnet"}
    expected |= {f"efficientnet_b{i}" for i in range(4)} | {"efficientnet_lite0"}
    assert expected <= set(list_backbones())


@pytest.mark.parametrize(("name", "width", "timm_name"), STAGE_CASES, ids=[f"{n}-{w}" for n, w, _ in STAGE_CASES])
@torch.no_grad()
def test_stage_features_equal_timm(name, width, timm_name):
    x = torch.randn(1, 3, 70, 53)
    for output_stride in (32, 16):
        ref = _randomize_bn(_timm_features(timm_name, output_stride))
        ours = create_backbone(name, output_stride=output_stride, **_kwargs(width)).eval()
        ours.model.load_state_dict(ref.state_dict())
        assert ours.feature_info.channels == tuple(ref.feature_info.channels())
        assert ours.feature_info.strides == (2, 4, 8, 16, 16 if output_stride == 16 else 32)
        _assert_same(ours(x), ref(x))


@pytest.mark.parametrize(
    ("name", "width", "channels"),
    [("mobilenet_v1", 0.25, (16, 32, 64, 128, 256)), ("pp_lcnet", 2.5, (80, 160, 320, 640, 1280))],
)
def test_widths_timm_does_not_register(name, width, channels):
    assert create_backbone(name, width_mult=width).feature_info.channels == channels


@pytest.mark.parametrize("name", sorted(EXPANSION_CHANNELS))
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_expansion_channels_and_strides(name, output_stride):
    backbone = create_backbone(name, feature_location="expansion", output_stride=output_stride)
    assert backbone.feature_info.channels == EXPANSION_CHANNELS[name]
    assert backbone.feature_info.strides == tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
    if name == "mobilenet_v2" and output_stride == 32:
        x = torch.randn(1, 3, 33, 47)  # odd sizes: ceil(H / stride) rows
        shapes = [tuple(f.shape[2:]) for f in backbone.eval()(x)]
        assert shapes == [(17, 24), (9, 12), (5, 6), (3, 3), (2, 2)]


# Where the taps are, written out from the architectures: (timm variant, stages whose first block is tapped).
HAND_TAPS = [
    ("mobilenet_v2", "mobilenetv2_100", (1, 2, 3, 5)),
    ("efficientnet_b0", "efficientnet_b0", (1, 2, 3, 5)),
    ("mobilenet_v3_small", "mobilenetv3_small_100", (0, 1, 2, 4)),
]


@pytest.mark.parametrize(("name", "timm_name", "tap_stages"), HAND_TAPS, ids=[c[0] for c in HAND_TAPS])
@torch.no_grad()
def test_expansion_taps_equal_hand_computation(name, timm_name, tap_stages):
    output_stride = 16
    ours = create_backbone(name, feature_location="expansion", output_stride=output_stride).eval()
    if name.startswith("mobilenet_v3"):
        ref = _randomize_bn(timm.create_model(timm_name, features_only=True, output_stride=output_stride))
    else:
        ref = _randomize_bn(timm.create_model(timm_name, num_classes=0, output_stride=output_stride))
    ours.model.load_state_dict(ref.state_dict())

    # Reference taps by hooks on timm's own modules: the first block's conv_pw + bn1 (BN + activation),
    # or the block's input where it has no expansion (MobileNetV3-Small's first block).
    taps: dict[int, torch.Tensor] = {}
    for s in tap_stages:
        block = ref.blocks[s][0]
        if hasattr(block, "conv_pwl"):  # InvertedResidual

            def hook(module, args, out, s=s):
                taps[s] = out

            block.bn1.register_forward_hook(hook)
        else:

            def pre_hook(module, args, s=s):
                taps[s] = args[0]

            block.register_forward_pre_hook(pre_hook)
    x = torch.randn(2, 3, 64, 80)
    if name.startswith("mobilenet_v3"):
        last = ref(x)[-1]  # MobileNetV3: the last block is the final 1x1 conv
    else:
        last = ref.forward_features(x)  # conv_head + bn2 (with its activation)
    _assert_same(ours(x), [taps[s] for s in tap_stages] + [last])


@torch.no_grad()
def test_expansion_taps_equal_torchvision_ssdlite():
    """Ours on torchvision's MobileNetV3-Large weights equals torchvision's SSDLite extractor (C4, C5)."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.ssdlite import _mobilenet_extractor

    torch.manual_seed(0)
    tv = _randomize_bn(mobilenet_v3_large())
    ours = create_backbone("mobilenet_v3_large", feature_location="expansion").eval()
    # Same blocks in the same order; copy tensor by tensor, checking shapes.
    tv_tensors = list(tv.features.state_dict().values())
    ours_state = ours.model.state_dict()
    assert len(tv_tensors) == len(ours_state)
    for (key, value), tv_value in zip(ours_state.items(), tv_tensors):
        assert value.shape == tv_value.shape, key
        value.copy_(tv_value)
    for module in ours.modules():  # torchvision's MobileNetV3 uses TF's BN epsilon
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3

    # Levels 0-2: torchvision's strided blocks' expansion (block[0]); C4 and C5 from the SSDLite extractor.
    strided = [i for i, b in enumerate(tv.features) if getattr(b, "_is_cn", False)]
    taps = []
    for i in strided[:3]:
        tv.features[i].block[0].register_forward_hook(lambda m, a, out: taps.append(out))
    extractor = _mobilenet_extractor(tv, trainable_layers=6, norm_layer=nn.BatchNorm2d).eval()
    x = torch.randn(1, 3, 96, 128)
    reference = list(extractor(x).values())
    assert reference[0].shape[1] == 672 and reference[1].shape[1] == 960
    _assert_same(ours(x), taps + reference[:2])


@pytest.mark.parametrize(("name", "out_indices"), [("mobilenet_v2", (3,)), ("mobilenet_v3_small", (0,))])
def test_expansion_subset_prunes_unused_modules(name, out_indices):
    full = create_backbone(name, feature_location="expansion").eval()
    part = create_backbone(name, feature_location="expansion", out_indices=out_indices).eval()
    state = part.model.state_dict()
    assert set(state) < set(full.model.state_dict())
    assert not any(k.startswith("conv_head") for k in state)
    part.model.load_state_dict({k: v for k, v in full.model.state_dict().items() if k in state})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _assert_same(part(x), [full(x)[i] for i in out_indices])
    # Every parameter left takes part in the output.
    sum(f.sum() for f in part.train()(x)).backward()
    assert all(p.grad is not None for p in part.parameters())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    ("name", "timm_name"), [("mobilenet_v2", "mobilenetv2_100"), ("mobilenet_v3_large", "mobilenetv3_large_100")]
)
@torch.no_grad()
def test_timm_checkpoint_loads(tmp_path, name, timm_name, suffix):
    classifier = _randomize_bn(timm.create_model(timm_name))
    path = tmp_path / f"weights{suffix}"
    state = classifier.state_dict()
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    x = torch.randn(1, 3, 64, 72)
    ref = _timm_features(timm_name, 32)
    ref.load_state_dict(state, strict=False)  # a features model lacks the classifier and head
    _assert_same(create_backbone(name, pretrained=path).eval()(x), ref.eval()(x))

    expansion = create_backbone(name, pretrained=path, feature_location="expansion").eval()
    final = classifier.forward_features(x)  # MobileNetV2: conv_head + bn2; MobileNetV3: the 960 conv
    torch.testing.assert_close(expansion(x)[-1], final, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "mnv3.pth"
    torch.save(timm.create_model("mobilenetv3_large_100").state_dict(), path)
    for location in ("stage", "expansion"):
        with pytest.raises(WeightsMismatchError, match=r"(?s)mnv3\.pth does not fit mobilenet_v2.*blocks\.\d+\.\d+\."):
            create_backbone("mobilenet_v2", pretrained=path, feature_location=location)
    narrow = tmp_path / "mnv2_050.pth"
    torch.save(timm.create_model("mobilenetv2_050").state_dict(), narrow)
    with pytest.raises(WeightsMismatchError, match=r"(?s)mnv2_050\.pth does not fit.*wrong shape: .* vs expected"):
        create_backbone("mobilenet_v2", pretrained=narrow, feature_location="expansion")


@pytest.mark.parametrize("location", ["stage", "expansion"])
@torch.no_grad()
def test_in_chans_adapts_a_three_channel_checkpoint(tmp_path, location):
    path = tmp_path / "mnv2.pth"
    state = _randomize_bn(timm.create_model("mobilenetv2_100")).state_dict()
    torch.save(state, path)
    rgb = create_backbone("mobilenet_v2", pretrained=path, feature_location=location).eval()
    for in_chans in (1, 4):
        ours = create_backbone("mobilenet_v2", pretrained=path, feature_location=location, in_chans=in_chans).eval()
        stem = ours.model.conv_stem.weight
        assert stem.shape[1] == in_chans
        torch.testing.assert_close(stem, adapt_input_conv(in_chans, state["conv_stem.weight"]))
    # A gray image through the summed stem equals the RGB net on the gray image repeated.
    gray = torch.rand(1, 1, 48, 48)
    mono = create_backbone("mobilenet_v2", pretrained=path, feature_location=location, in_chans=1).eval()
    _assert_same(mono(gray), rgb(gray.expand(-1, 3, -1, -1)), tol=1e-4)  # summation order differs


# (timm classifier, paper params in M, paper MACs in M, relative params tolerance); MACs within 5%.
PAPER_FIGURES = [
    ("mobilenetv1_100", 4.2, 569, 0.03),
    # The paper's 3.4M truncates TF-slim's 3.47M, which counts conv/FC weights only; BN affine adds 34k.
    ("mobilenetv2_100", 3.4, 300, 0.035),
    ("mobilenetv3_large_100", 5.4, 217, 0.03),
    ("mobilenetv3_small_100", 2.5, 56, 0.03),
    ("efficientnet_b0", 5.3, 390, 0.03),
    ("lcnet_100", 3.0, 161, 0.03),
]


@pytest.mark.parametrize(
    ("timm_name", "params", "macs", "params_tol"), PAPER_FIGURES, ids=[f[0] for f in PAPER_FIGURES]
)
def test_published_complexity(timm_name, params, macs, params_tol):
    model = timm.create_model(timm_name)
    measured_params = count_params(model) / 1e6
    measured_macs = count_macs(model, torch.zeros(1, 3, 224, 224)) / 1e6
    assert measured_params == pytest.approx(params, rel=params_tol)
    assert measured_macs == pytest.approx(macs, rel=0.05)
    if timm_name == "mobilenetv2_100":
        bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
        assert (count_params(model) - bn) / 1e6 == pytest.approx(3.47, abs=0.005)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"width_mult 0\.6 is not supported; choose one of \[0\.35, 0\.5"):
        create_backbone("mobilenet_v2", width_mult=0.6)
    with pytest.raises(ValueError, match=r"width_mult 0\.5 is not supported; choose one of \[0\.75, 1\.0\]"):
        create_backbone("mobilenet_v3_small", width_mult=0.5)
    for name in ("mobilenet_v1", "pp_lcnet"):
        with pytest.raises(ValueError, match=f"{name} has no expansion layers"):
            create_backbone(name, feature_location="expansion")
    with pytest.raises(ValueError, match="no ImageNet weights are published for mobilenet_v2 \\(width_mult=0.35\\)"):
        create_backbone("mobilenet_v2", width_mult=0.35, pretrained=True)
    with pytest.raises(ValueError, match="no ImageNet weights are published for pp_lcnet \\(width_mult=2.5\\)"):
        create_backbone("pp_lcnet", width_mult=2.5, pretrained=True, feature_location="stage")


@pytest.mark.parametrize("location", ["stage", "expansion"])
def test_pretrained_offline_names_the_source(location):
    # tests/conftest.py sets HF_HUB_OFFLINE=1, so this fails at once without the weights in the cache.
    with pytest.raises(RuntimeError, match=r"timm/mobilenetv2_100\.ra_in1k.*pretrained='/path/to/weights"):
        create_backbone("mobilenet_v2", pretrained=True, feature_location=location)


# MobileNetV3 with the detection paper's reduced tail (section 6.1.1): torchvision's `reduced_tail=True`.
REDUCED_TAIL = [("mobilenet_v3_large", (64, 72, 240, 672, 480)), ("mobilenet_v3_small", (16, 72, 96, 288, 288))]


def _copy_torchvision_features(ours: nn.Module, tv_features: nn.Module) -> None:
    """Copy torchvision's `features` into our timm-layout model tensor by tensor (same blocks, same order)."""
    tv_tensors = list(tv_features.state_dict().values())
    ours_state = ours.model.state_dict()
    assert len(tv_tensors) == len(ours_state)
    for (key, value), tv_value in zip(ours_state.items(), tv_tensors):
        assert value.shape == tv_value.shape, key
        value.copy_(tv_value)
    for module in ours.modules():  # torchvision's MobileNetV3 uses TF's BN epsilon, timm 1e-5
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3


@pytest.mark.parametrize(("name", "channels"), REDUCED_TAIL, ids=[n for n, _ in REDUCED_TAIL])
@pytest.mark.parametrize("location", ["stage", "expansion"])
def test_reduced_tail_has_torchvisions_parameters(name, channels, location):
    import torchvision.models as tvm

    tv = getattr(tvm, name)(reduced_tail=True)
    ours = create_backbone(name, reduced_tail=True, feature_location=location)
    assert count_params(ours) == count_params(tv.features)
    assert ours.feature_info.channels[-1] == tv.features[-1].out_channels == channels[-1]
    if location == "expansion":
        assert ours.feature_info.channels == channels


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_reduced_tail_builder_reproduces_timm_without_reduction(name):
    """Our copy of timm's architecture definition builds timm's own network when the tail is kept."""
    from backbones.mobilenet_v3 import create_mobilenet_v3

    timm_name = name.replace("mobilenet_v3_", "mobilenetv3_") + "_100"
    ref, ours = timm.create_model(timm_name), create_mobilenet_v3(timm_name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert str(ours) == str(ref)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@torch.no_grad()
def test_reduced_tail_taps_equal_torchvision_ssdlite(output_stride):
    """With torchvision's reduced-tail weights, our expansion taps equal its SSDLite extractor's C4 and C5."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.ssdlite import _mobilenet_extractor

    torch.manual_seed(0)
    tv = _randomize_bn(mobilenet_v3_large(reduced_tail=True))
    ours = create_backbone(
        "mobilenet_v3_large", reduced_tail=True, feature_location="expansion", output_stride=output_stride
    ).eval()
    _copy_torchvision_features(ours, tv.features)
    assert ours.feature_info.strides == tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
    x = torch.randn(2, 3, 67, 93)  # odd sizes: ceil(H / stride) rows
    features = ours(x)
    assert [tuple(f.shape[-2:]) for f in features] == [(-(-67 // s), -(-93 // s)) for s in ours.feature_info.strides]
    if output_stride == 32:  # torchvision's extractor has no dilation
        extractor = _mobilenet_extractor(tv, trainable_layers=6, norm_layer=nn.BatchNorm2d).eval()
        reference = list(extractor(x).values())
        assert (reference[0].shape[1], reference[1].shape[1]) == (672, 480)
        _assert_same(features[3:], reference[:2])


def test_reduced_tail_out_indices_in_chans_and_weights(tmp_path):
    backbone = create_backbone(
        "mobilenet_v3_large", reduced_tail=True, feature_location="expansion", out_indices=(3, 4), in_chans=1
    )
    assert backbone.feature_info.channels == (672, 480)
    assert [f.shape[1] for f in backbone(torch.randn(1, 1, 64, 64))] == [672, 480]
    with pytest.raises(ValueError, match=r"no ImageNet weights .*reduced_tail=True.*full tail only"):
        create_backbone("mobilenet_v3_large", reduced_tail=True, pretrained=True)
    # A local file in timm's layout loads, checked (both feature locations).
    source = create_backbone("mobilenet_v3_large", reduced_tail=True, feature_location="stage")
    _randomize_bn(source.model)
    path = tmp_path / "rt.pth"
    torch.save(source.model.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    loaded = create_backbone("mobilenet_v3_large", reduced_tail=True, pretrained=path).eval()
    _assert_same(loaded(x), source.eval()(x))
    expansion = create_backbone("mobilenet_v3_large", reduced_tail=True, pretrained=path, feature_location="expansion")
    torch.testing.assert_close(expansion.eval()(x)[-1], source(x)[-1])
    with pytest.raises(WeightsMismatchError):  # a full-tail checkpoint does not fit
        full = tmp_path / "full.pth"
        torch.save(timm.create_model("mobilenetv3_large_100").state_dict(), full)
        create_backbone("mobilenet_v3_large", reduced_tail=True, pretrained=full)
