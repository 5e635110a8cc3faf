"""Every backbone as an smp encoder ("lw-<name>"): contract, numbers against smp's timm encoder, matrix, errors."""

import pytest
import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch

import backbones
from backbones._smp_encoder import LiteDenseEncoder, UnknownEncoderError
from backbones.compat_table import ARCHITECTURES, check_combination, configurations

NAMES = backbones.list_backbones()


def test_every_backbone_is_listed_by_smp():
    assert {f"lw-{n}" for n in NAMES} <= set(smp_encoders.get_encoder_names())


@pytest.mark.parametrize("name", NAMES)
def test_encoder_contract(name):
    encoder = smp_encoders.get_encoder(f"lw-{name}", in_channels=3, depth=5, weights=None, output_stride=16)
    features = encoder(torch.randn(2, 3, 64, 64))
    assert len(features) == len(encoder.out_channels) == 6
    assert encoder.output_stride == 16
    assert [f.shape[1] for f in features] == encoder.out_channels
    # The input, then strides 2, 4, 8, 16 and the dilated 16.
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8, 4, 4]


def test_names_imported_before_backbones_still_work():
    # `from smp.encoders import get_encoder` done before `import backbones` keeps smp's function: it builds
    # our encoder from smp's table (no family options, no weights) rather than failing.
    encoder = smp_encoders.get_encoder._litedense_original("lw-mobilenet_v2", depth=3, output_stride=16)
    assert isinstance(encoder, LiteDenseEncoder) and encoder.output_stride == 8


def _copy_timm_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    # Ours nests the same timm network deeper: encoder.model.backbone.model.<timm key>.
    prefix = "model.backbone.model."
    state = {prefix + k[len("model.") :]: v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)


@pytest.mark.parametrize("depth,output_stride", [(5, 16), (4, 8), (3, 32)])
def test_lw_mobilenet_v2_matches_smp_timm_encoder(depth, output_stride):
    # Reference: smp's own timm encoder of the same network, given the same weights.
    ours = smp_encoders.get_encoder("lw-mobilenet_v2", depth=depth, output_stride=output_stride).eval()
    theirs = smp_encoders.get_encoder("tu-mobilenetv2_100", depth=depth, output_stride=output_stride).eval()
    _copy_timm_weights(ours, theirs)
    assert ours.out_channels == theirs.out_channels
    assert ours.output_stride == theirs.output_stride
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_representative_architectures_forward_backward(arch):
    # The default setting of every architecture with mobilenet_v2; the full matrix is the slow test below.
    check_combination("mobilenet_v2", arch, **configurations(arch, full=False)[0])


@pytest.mark.parametrize(
    "backbone,arch,setting",
    [
        ("mobilenet_v2", "DeepLabV3", dict(depth=3, output_stride=8, in_channels=1)),
        ("mobilenet_v2", "DeepLabV3Plus", dict(depth=4, output_stride=8, in_channels=4)),
        ("mobilenet_v2", "FPN", dict(depth=4)),
    ],
)
def test_depth_stride_and_channels_subset(backbone, arch, setting):
    check_combination(backbone, arch, **setting)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
@pytest.mark.parametrize("name", NAMES)
def test_full_matrix(name, arch):
    for setting in configurations(arch, full=True):
        check_combination(name, arch, **setting)


def test_family_option_reaches_the_backbone():
    model = smp.DeepLabV3Plus("lw-mobilenet_v2", encoder_weights=None, classes=2, width_mult=0.5)
    reference = backbones.create_backbone("mobilenet_v2", width_mult=0.5)
    assert model.encoder.out_channels == [3, *reference.feature_info.channels]
    # The same option through smp's timm path.
    tu = smp.Unet("tu-lw_mobilenet_v2", encoder_weights=None, classes=2, width_mult=0.5)
    assert tu.encoder.out_channels == model.encoder.out_channels


def test_save_pretrained_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus("lw-mobilenet_v2", encoder_weights=None, classes=3, width_mult=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "hub")
    loaded = smp.from_pretrained(str(tmp_path / "hub")).eval()
    assert isinstance(loaded.encoder, LiteDenseEncoder)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    fresh = smp.DeepLabV3Plus("lw-mobilenet_v2", encoder_weights=None, classes=3, width_mult=0.5).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_encoder_weights_from_local_file(tmp_path):
    source = backbones.create_backbone("mobilenet_v2")
    path = tmp_path / "mobilenetv2_100.pth"
    torch.save(source.model.state_dict(), path)  # timm's layout, as published
    model = smp.Unet("lw-mobilenet_v2", encoder_weights=str(path), classes=2)
    loaded = model.encoder.model.backbone.model.state_dict()
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(loaded[key], value)


def test_imagenet_weights_offline_fail_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not fetch.*encoder_weights"):
        smp.Unet("lw-mobilenet_v2", encoder_weights="imagenet", classes=2)


def test_dict_path_dilates_and_adapts_channels():
    # smp's table path (EncoderClass(**params), set_in_channels, make_dilated) must also work.
    original = smp_encoders.get_encoder._litedense_original
    encoder = original("lw-mobilenet_v2", in_channels=1, depth=5, weights=None, output_stride=8)
    features = encoder(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8, 8, 8]
    assert encoder.out_channels[0] == 1


@pytest.mark.parametrize(
    "name,match",
    [
        ("lw-mobilenetv2", "did you mean 'lw-mobilenet_v2'"),
        ("lw_mobilenet_v2", "did you mean 'lw-mobilenet_v2'"),
        ("tu-lw_mobilenet_v", "did you mean 'lw_mobilenet_v2'"),
    ],
)
def test_unknown_names_suggest_close_ones(name, match):
    with pytest.raises((UnknownEncoderError, ValueError), match=match):
        smp.Unet(name, encoder_weights=None)


def test_unknown_names_keep_smps_error_type():
    with pytest.raises(KeyError):
        smp_encoders.get_encoder("lw-nonexistent_net")


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights=None, groups=3), "family option.*width_mult"),
        (lambda: smp.FPN("lw-mobilenet_v2", encoder_weights=None, encoder_output_stride=16), "does not take"),
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights=None, encoder_depth=6), "must be 1 to 5"),
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights="coco"), "not available"),
        (lambda: smp.DeepLabV3("lw-mobilenet_v2", encoder_weights=None, encoder_output_stride=32), "8 or 16"),
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights=None, width_mult=0.3), "width_mult 0.3"),
    ],
)
def test_bad_arguments_fail_clearly(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_too_small_input_for_pan_fails_clearly():
    model = smp.PAN("lw-mobilenet_v2", encoder_weights=None, decoder_channels=16).eval()
    with pytest.raises(ValueError, match="PAN .* at least 128x128"):
        model(torch.randn(1, 3, 64, 64))


def test_wrong_channels_and_indivisible_sizes_fail_clearly():
    model = smp.DeepLabV3Plus("lw-mobilenet_v2", encoder_weights=None, decoder_channels=32).eval()
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(RuntimeError, match="divisible by 16"):  # smp's own check, before our encoder runs
        model(torch.randn(1, 3, 50, 64))
