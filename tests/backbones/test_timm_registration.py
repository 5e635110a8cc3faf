"""Every backbone as a timm model ("lw_<name>"): registry, features_only contract, numbers against timm."""

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

import backbones
import backbones.dropin  # the explicit line the README shows
from backbones.dropin.timm import LiteDenseTimmModel, canonical_levels

NAMES = backbones.list_backbones()


def test_every_backbone_is_a_timm_model_of_ours():
    assert set(timm.list_models("lw_*")) >= {f"lw_{n}" for n in NAMES}
    for name in NAMES:
        # Ours, not an overwritten timm model of the same name.
        assert timm.models.model_entrypoint(f"lw_{name}").__module__ == "backbones.dropin.timm"


@pytest.mark.parametrize("name", NAMES)
def test_features_only_contract(name):
    model = timm.create_model(f"lw_{name}", features_only=True, output_stride=16, out_indices=(1, 2, 3, 4))
    assert isinstance(model, LiteDenseTimmModel)
    assert model.feature_info.reduction() == [4, 8, 16, 16]
    features = model(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    assert [f.shape[-1] for f in features] == [16, 8, 4, 4]
    # The canonical levels are the deepest tap per stride of the backbone itself.
    _, natural = canonical_levels(name)
    assert model.feature_info.channels() == list(natural.channels[1:])


def test_matches_timms_own_mobilenetv2():
    # Reference: timm's own features_only network with the same weights gives the same maps and feature_info.
    kwargs = dict(features_only=True, output_stride=8, out_indices=(0, 2, 4))
    theirs = timm.create_model("mobilenetv2_100", **kwargs).eval()
    ours = timm.create_model("lw_mobilenet_v2", **kwargs).eval()
    ours.backbone.model.load_state_dict(theirs.state_dict())
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b)


def test_smp_timm_universal_path_and_family_option():
    model = smp.DeepLabV3Plus("tu-lw_mobilenet_v2", encoder_weights=None, classes=2, width_mult=0.75)
    reference = backbones.create_backbone("mobilenet_v2", width_mult=0.75)
    assert model.encoder.out_channels == [3, *reference.feature_info.channels]
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2, 64, 64)


def test_without_features_only_and_intermediates():
    model = timm.create_model("lw_mobilenet_v2", in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        deepest = model(x)
        final, intermediates = model.forward_intermediates(x, indices=2)
    assert deepest.shape == (1, model.num_features, 2, 2)
    torch.testing.assert_close(final, deepest)
    assert [f.shape[-1] for f in intermediates] == [4, 2]  # the last two levels
    assert model.num_classes == 0 and model.pretrained_cfg["architecture"] == "lw_mobilenet_v2"


def test_int_out_indices_mean_last_n():
    model = timm.create_model("lw_mobilenet_v2", features_only=True, out_indices=2)
    assert model.feature_info.reduction() == [16, 32]


def test_local_weights_through_timms_overlay(tmp_path):
    source = backbones.create_backbone("mobilenet_v2")
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(source.model.state_dict(), str(path))
    model = timm.create_model(
        "lw_mobilenet_v2", pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    torch.testing.assert_close(model.backbone.model.conv_stem.weight, source.model.conv_stem.weight)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(features_only=True, out_indices=(5,)), ValueError, "out of range"),
        (dict(out_indices=(1, 2)), ValueError, "needs features_only=True"),
        (dict(features_only=True, drop_rate=0.1), ValueError, "does not take the option"),
        (dict(features_only=True, output_stride=4), ValueError, "unsupported output_stride"),
        (dict(features_only=True, pretrained=True), RuntimeError, "could not fetch"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model("lw_mobilenet_v2", **kwargs)


def test_unknown_name_through_smp_is_timms_error():
    with pytest.raises(RuntimeError, match="Unknown model"):
        smp.Unet("tu-lw_mobilenet_v", encoder_weights=None)


def test_timm_model_refuses_torchscript_clearly():
    with pytest.raises(RuntimeError, match="not TorchScript-scriptable"):
        torch.jit.script(timm.create_model("lw_mobilenet_v2", features_only=True))
