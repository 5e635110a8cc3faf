"""GhostNet, Xception and Xception-65: faithfulness to timm, checkpoints, dilation, published figures."""

import math
import re
import urllib.error

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from backbones import WeightsMismatchError, create_backbone
from backbones.complexity import count_macs, count_params

NAMES = ("ghostnet", "xception", "xception65")
ODD_SIZE = (67, 93)
# (name, family kwargs) -> channels of the five levels.
CHANNELS = {
    ("ghostnet", "stage", 1.0): (16, 24, 40, 112, 960),
    ("ghostnet", "expansion", 1.0): (48, 72, 240, 672, 960),
    ("ghostnet", "stage", 0.5): (8, 12, 20, 56, 480),
    ("ghostnet", "stage", 1.3): (20, 32, 52, 144, 1248),
    ("xception", "stage", None): (64, 128, 256, 728, 2048),
    ("xception65", "stage", None): (128, 256, 728, 1024, 2048),
}


def _build(name, location="stage", width=None, **kwargs):
    family = {} if width is None else {"width_mult": width}
    return create_backbone(name, feature_location=location, **family, **kwargs)


def _smooth_image(*size, channels=3, seed=0):
    """A smooth image (upsampled noise), so neighbouring feature pixels are related as in photos."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.randn(1, channels, 9, 12, generator=gen)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize(("name", "location", "width"), list(CHANNELS))
def test_levels_have_ceil_sizes_at_every_output_stride(name, location, width, output_stride):
    model = _build(name, location, width, output_stride=output_stride).eval()
    strides = tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
    assert model.feature_info.channels == CHANNELS[(name, location, width)]
    assert model.feature_info.strides == strides
    x = torch.randn(1, 3, *ODD_SIZE)
    with torch.no_grad():
        features = model(x)
        again = model(x)
    for feature, channels, stride, repeat in zip(features, model.feature_info.channels, strides, again):
        assert feature.shape == (1, channels, math.ceil(ODD_SIZE[0] / stride), math.ceil(ODD_SIZE[1] / stride))
        assert torch.equal(feature, repeat)  # eval is deterministic


# ---------------------------------------------------------------- faithfulness to timm (same weights, OS 32)


def _ghostnet_reference(timm_model, x, location):
    """timm GhostNet's activations at our taps, read with hooks from its classifier network."""
    blocks = timm_model.blocks
    if location == "stage":
        modules = [timm_model.act1, blocks[2], blocks[4], blocks[6], blocks[9]]
    else:
        modules = [blocks[1][0].ghost1, blocks[3][0].ghost1, blocks[5][0].ghost1, blocks[7][0].ghost1, blocks[9]]
    taps = []
    handles = [m.register_forward_hook(lambda _m, _i, out: taps.append(out.clone())) for m in modules]
    try:
        final = timm_model.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    return taps, final


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("location", ["stage", "expansion"])
def test_ghostnet_checkpoint_gives_timm_features(tmp_path, suffix, location):
    reference = timm.create_model("ghostnet_100").eval()  # the classifier, head included
    path = tmp_path / f"ghostnet_100{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = create_backbone("ghostnet", pretrained=path, feature_location=location).eval()
    x = _smooth_image(*ODD_SIZE)
    with torch.no_grad():
        ours = model(x)
        taps, final = _ghostnet_reference(reference, x, location)
    for mine, theirs in zip(ours, taps):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours[-1], final, rtol=0, atol=0)  # timm's own forward_features


def test_xception_equals_timm_features_only_on_the_padded_image(tmp_path):
    reference = timm.create_model("legacy_xception").eval()
    path = tmp_path / "xception.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = create_backbone("xception", pretrained=path).eval()
    timm_features = timm.create_model("legacy_xception", features_only=True).eval()
    timm_features.load_state_dict({f"body.{k}": v for k, v in model.model.state_dict().items()})
    x = _smooth_image(*ODD_SIZE)
    with torch.no_grad():
        ours = model(x)
        theirs = timm_features(F.pad(x, (3, 3, 3, 3)))  # zero padding by 3 = our stem padding
        unpadded = timm_features(x)
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    assert unpadded[0].shape[-2:] == (31, 44)  # timm's unpadded stem: not ceil(H / 2)


def test_xception65_checkpoint_gives_timm_features(tmp_path):
    reference = timm.create_model("xception65").eval()
    path = tmp_path / "xception65.pth"
    torch.save(reference.state_dict(), path)
    x = _smooth_image(*ODD_SIZE)
    for output_stride in (32, 16):
        model = create_backbone("xception65", pretrained=path, output_stride=output_stride).eval()
        timm_features = timm.create_model("xception65", features_only=True, output_stride=output_stride).eval()
        flat = {re.sub(r"^(stem|blocks)\.(\d+)", r"\1_\2", k): v for k, v in model.model.state_dict().items()}
        timm_features.load_state_dict(flat)
        with torch.no_grad():
            for mine, theirs in zip(model(x), timm_features(x)):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


# ---------------------------------------------------------------- checkpoints: wrong files, channels, hub


def test_wrong_architecture_file_is_rejected_naming_keys(tmp_path):
    path = tmp_path / "ghostnet_050.pth"
    torch.save(timm.create_model("ghostnet_050").state_dict(), path)
    wrong_shape = r"blocks\.0\.0\.ghost1\.cheap_operation\.0\.weight \(4, 1, 3, 3\) vs expected \(8, 1, 3, 3\)"
    with pytest.raises(WeightsMismatchError, match=rf"(?s)ghostnet \(width_mult=1.0\).*wrong shape: {wrong_shape}"):
        create_backbone("ghostnet", pretrained=path)
    with pytest.raises(
        WeightsMismatchError, match=r"(?s)missing \d+ key\(s\): block1\..*unexpected \d+ key\(s\): blocks\.0"
    ):
        create_backbone("xception", pretrained=path)


def test_four_channel_model_from_three_channel_file(tmp_path):
    state = timm.create_model("ghostnet_100").state_dict()
    path = tmp_path / "rgb.pth"
    torch.save(state, path)
    model = create_backbone("ghostnet", pretrained=path, in_chans=4).eval()
    torch.testing.assert_close(model.model.conv_stem.weight, adapt_input_conv(4, state["conv_stem.weight"]))
    features = model(torch.randn(1, 4, 32, 48))
    assert features[0].shape == (1, 16, 16, 24)
    with pytest.raises(ValueError, match="built for 4-channel input but got 3 channels"):
        model(torch.randn(1, 3, 32, 48))


def test_xception_grayscale_from_rgb_file(tmp_path):
    state = timm.create_model("legacy_xception").state_dict()
    path = tmp_path / "xception.pth"
    torch.save(state, path)
    model = create_backbone("xception", pretrained=path, in_chans=1, out_indices=(0,))
    torch.testing.assert_close(model.model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_hub_weights_offline_name_the_source(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"(?s)timm/ghostnet_100\.in1k.*pretrained='/path/to/weights"):
        create_backbone("ghostnet", pretrained=True)
    with pytest.raises(ValueError, match="no ImageNet weights are published for ghostnet \\(width_mult=0.5\\)"):
        create_backbone("ghostnet", pretrained=True, width_mult=0.5)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # legacy_xception's weights are a GitHub release file, not on the Hub.
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"(?s)xception-43020ad28\.pth.*pretrained="):
        create_backbone("xception", pretrained=True)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="width_mult 0.75 is not supported"):
        create_backbone("ghostnet", width_mult=0.75)
    for name in ("xception", "xception65"):
        with pytest.raises(ValueError, match=f"{name} has no expansion layers"):
            create_backbone(name, feature_location="expansion")


# ---------------------------------------------------------------- gradients reach every parameter


@pytest.mark.parametrize(
    ("name", "location", "out_indices"),
    [
        ("ghostnet", "stage", None),
        ("ghostnet", "expansion", None),
        ("ghostnet", "expansion", (0, 3)),
        ("ghostnet", "stage", (1,)),
        ("xception", "stage", None),
        ("xception", "stage", (1, 2)),
        ("xception65", "stage", (0, 3)),
    ],
)
def test_every_parameter_gets_a_gradient(name, location, out_indices):
    model = create_backbone(name, feature_location=location, out_indices=out_indices, output_stride=16)
    features = model(torch.randn(2, 3, 40, 56))
    assert len(features) == len(model.feature_info)
    sum(f.square().mean() for f in features).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------- dilation


def _constant_se_gates(state):
    """Zero the SE expansion weights, so each SE gate is a per-channel constant (see the test below)."""
    return {k: torch.zeros_like(v) if k.endswith("se.conv_expand.weight") else v for k, v in state.items()}


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize(
    ("name", "location"),
    [("ghostnet", "stage"), ("ghostnet", "expansion"), ("xception", "stage"), ("xception65", "stage")],
)
def test_dilated_maps_subsample_to_the_undilated_ones(name, location, output_stride):
    """The a-trous identity: with DeepLab's rule, the dilated map at every r-th pixel equals the undilated map.

    It holds exactly (boundaries included) only if every layer after a removed stride has the right
    dilation and padding and every layer before it keeps its own. Levels above the output stride are
    unchanged. GhostNet's squeeze-excitation averages over all pixels, not every r-th, so its gates
    are made constant here (same weights in both networks).
    """
    torch.manual_seed(0)
    undilated = create_backbone(name, feature_location=location).double().eval()
    state = _constant_se_gates(undilated.state_dict())
    undilated.load_state_dict(state)
    dilated = create_backbone(name, feature_location=location, output_stride=output_stride).double().eval()
    dilated.load_state_dict(state)
    x = torch.randn(1, 3, 51, 77, dtype=torch.float64)
    with torch.no_grad():
        reference, features = undilated(x), dilated(x)
    for level, (mine, ref, stride) in enumerate(zip(features, reference, undilated.feature_info.strides)):
        r = stride // min(stride, output_stride)
        if r == 1:
            assert torch.equal(mine, ref), f"level {level} above the output stride changed"
        else:
            torch.testing.assert_close(mine[..., ::r, ::r], ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_os16_map_is_new_information_yet_related(name):
    """Between the undilated pixels, the OS16 map is neither a copy of OS32 nor unrelated to it."""
    torch.manual_seed(0)
    coarse = create_backbone(name).eval()
    fine = create_backbone(name, output_stride=16).eval()
    fine.load_state_dict(coarse.state_dict())
    x = _smooth_image(*ODD_SIZE)
    with torch.no_grad():
        low, high = coarse(x)[-1], fine(x)[-1]
    upsampled = low.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., : high.shape[-2], : high.shape[-1]]
    between = torch.ones(high.shape[-2:], dtype=torch.bool)
    between[::2, ::2] = False
    a, b = upsampled[..., between].flatten(), high[..., between].flatten()
    assert (a - b).abs().max() > 0.1 * b.abs().max()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.1


def test_dilation_attributes_follow_deeplab_rule():
    ghost = create_backbone("ghostnet", output_stride=8).model.blocks
    strided16, strided32 = ghost[5][0], ghost[7][0]
    # Stride-16 bottleneck: its downsampling layers keep dilation 1, what follows gets 2.
    assert strided16.conv_dw.stride == (1, 1) and strided16.conv_dw.dilation == (1, 1)
    assert strided16.shortcut[0].stride == (1, 1) and strided16.shortcut[0].dilation == (1, 1)
    assert strided16.ghost2.cheap_operation[0].dilation == (2, 2)
    assert ghost[6][0].ghost1.cheap_operation[0].dilation == (2, 2)
    # Stride-32 bottleneck: first dilation 2, then 4; paddings stay "same".
    assert strided32.ghost1.cheap_operation[0].dilation == (2, 2)
    assert strided32.conv_dw.dilation == (2, 2) and strided32.conv_dw.padding == (4, 4)  # 5x5 kernel
    assert strided32.ghost2.cheap_operation[0].dilation == (4, 4)
    assert ghost[8][-1].conv_dw is None and ghost[8][-1].ghost1.cheap_operation[0].dilation == (4, 4)
    net = create_backbone("xception", output_stride=8).model
    assert net.block3.skip.stride == (1, 1) and net.block3.rep[1].conv1.dilation == (1, 1)
    assert net.block4.rep[1].conv1.dilation == (2, 2)
    assert net.block12.skip.stride == (1, 1) and net.block12.rep[1].conv1.dilation == (2, 2)
    pool = net.block12.rep[-1]  # stride 1, dilated by 2, -inf padding of 2
    assert pool[1].stride == 1 and pool[1].dilation == 2 and pool[0].padding == (2, 2, 2, 2)
    assert net.conv3.conv1.dilation == (4, 4) and net.conv4.conv1.padding == (4, 4)
    assert net.block2.skip.stride == (2, 2)  # stride 8 is kept at output stride 8


# ---------------------------------------------------------------- published figures


@pytest.mark.parametrize(
    ("timm_name", "size", "params", "macs"),
    [
        # Han et al. 2020, Table 7 (ImageNet): 0.5x 2.6M / 42M, 1.0x 5.2M / 141M, 1.3x 7.3M / 226M.
        ("ghostnet_050", 224, 2.6e6, 42e6),
        ("ghostnet_100", 224, 5.2e6, 141e6),
        ("ghostnet_130", 224, 7.3e6, 226e6),
        # Chollet 2017, Table 3: 22,855,952 parameters (no FLOPs given).
        ("legacy_xception", 299, 22.9e6, None),
    ],
)
def test_published_figures(timm_name, size, params, macs):
    model = timm.create_model(timm_name)
    assert count_params(model) == pytest.approx(params, rel=0.03)
    if macs is not None:
        assert count_macs(model, torch.randn(1, 3, size, size)) == pytest.approx(macs, rel=0.05)
