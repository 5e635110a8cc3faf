"""Every backbone as an smp encoder ("lw-<name>"): registration, contract, numbers against smp, matrix, errors."""

import subprocess
import sys

import pytest
import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch

import backbones
import backbones.dropin  # the explicit line the README shows
from backbones.dropin import LiteDenseEncoder, smp_variant_name
from tools.compat_table import ARCHITECTURES, check_combination, configurations

NAMES = backbones.list_backbones()


def test_import_backbones_touches_no_other_library():
    # In a fresh interpreter: our registry fills, smp is not imported, timm's registry has none of ours.
    code = (
        "import sys, backbones, timm; "
        "assert 'segmentation_models_pytorch' not in sys.modules; "
        "assert backbones.list_backbones() and not timm.list_models('lw_*'); "
        "import backbones.dropin, segmentation_models_pytorch as smp; "
        "assert timm.list_models('lw_*') and 'lw-mobilenet_v2' in smp.encoders.get_encoder_names()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_smp_functions_are_smps_own():
    # The drop-in adds table entries only: every get_encoder smp's modules hold is smp's function.
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("segmentation_models_pytorch") and hasattr(module, "get_encoder"):
            assert module.get_encoder.__module__ == "segmentation_models_pytorch.encoders", module_name


def test_every_backbone_and_variant_is_listed_by_smp():
    names = set(smp_encoders.get_encoder_names())
    assert {f"lw-{n}" for n in NAMES} <= names
    for name in NAMES:
        for options in backbones.get_backbone_entry(name).variants:
            assert smp_variant_name(name, **options) in names
    assert backbones.dropin.register() == {"timm": [], "smp": []}  # idempotent


@pytest.mark.parametrize(
    "smp_name,name,options",
    [
        ("lw-mobilenet_v2_050", "mobilenet_v2", dict(width_mult=0.5)),
        ("lw-mobilenet_v2_140", "mobilenet_v2", dict(width_mult=1.4)),
        ("lw-shufflenet_v1_g8_050", "shufflenet_v1", dict(groups=8, width_mult=0.5)),
        ("lw-shufflenet_v1_g1", "shufflenet_v1", dict(groups=1)),
        ("lw-mobilenet_v3_large_075_reduced_tail", "mobilenet_v3_large", dict(width_mult=0.75, reduced_tail=True)),
    ],
)
def test_named_variant_is_the_family_option(smp_name, name, options):
    assert smp_variant_name(name, **options) == smp_name
    model = smp.Unet(smp_name, encoder_weights=None, classes=2)
    reference = backbones.create_backbone(name, **options)
    # The canonical levels: the deepest tap at each stride (shufflenet taps twice at stride 32).
    deepest = {s: c for c, s in zip(reference.feature_info.channels, reference.feature_info.strides)}
    assert model.encoder.out_channels == [3, *([0] if 2 not in deepest else []), *deepest.values()]


@pytest.mark.parametrize("name", NAMES)
def test_encoder_contract(name):
    encoder = smp_encoders.get_encoder(f"lw-{name}", in_channels=3, depth=5, weights=None, output_stride=16)
    features = encoder(torch.randn(2, 3, 64, 64))
    assert len(features) == len(encoder.out_channels) == 6
    assert encoder.output_stride == 16
    assert [f.shape[1] for f in features] == encoder.out_channels
    # The input, then strides 2, 4, 8, 16 and the dilated 16.
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8, 4, 4]


def _copy_timm_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    # Ours nests the same timm network deeper: encoder.model.backbone.model.<timm key>.
    prefix = "model.backbone.model."
    state = {prefix + k[len("model.") :]: v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)


@pytest.mark.parametrize("depth,output_stride,in_channels", [(5, 16, 3), (4, 8, 1), (3, 32, 4)])
def test_lw_mobilenet_v2_matches_smp_timm_encoder(depth, output_stride, in_channels):
    # Reference: smp's own timm encoder of the same network, given the same weights.
    kwargs = dict(depth=depth, output_stride=output_stride, in_channels=in_channels)
    ours = smp_encoders.get_encoder("lw-mobilenet_v2", **kwargs).eval()
    theirs = smp_encoders.get_encoder("tu-mobilenetv2_100", **kwargs).eval()
    _copy_timm_weights(ours, theirs)
    assert ours.out_channels == theirs.out_channels
    assert ours.output_stride == theirs.output_stride
    x = torch.randn(2, in_channels, 64, 64)
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


def test_family_options_through_tu_kwargs_equal_the_named_variant():
    torch.manual_seed(0)
    named = smp.DeepLabV3Plus("lw-mobilenet_v2_050", encoder_weights=None, classes=2).eval()
    tu = smp.DeepLabV3Plus("tu-lw_mobilenet_v2", encoder_weights=None, classes=2, width_mult=0.5).eval()
    reference = backbones.create_backbone("mobilenet_v2", width_mult=0.5)
    assert named.encoder.out_channels == tu.encoder.out_channels == [3, *reference.feature_info.channels]
    # One network under both names (encoder.model.backbone.model.<timm key>): the same keys and, given the
    # same weights, the same output.
    named.load_state_dict(tu.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(named(x), tu(x), rtol=0, atol=0)


def test_save_pretrained_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus("lw-mobilenet_v2_050", encoder_weights=None, classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "hub")
    loaded = smp.from_pretrained(str(tmp_path / "hub")).eval()
    assert isinstance(loaded.encoder, LiteDenseEncoder) and loaded.encoder.out_channels == model.encoder.out_channels
    torch.save(model.state_dict(), tmp_path / "model.pth")
    fresh = smp.DeepLabV3Plus("lw-mobilenet_v2_050", encoder_weights=None, classes=3).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_local_weights_through_tu_and_timms_overlay(tmp_path):
    source = backbones.create_backbone("mobilenet_v2")
    path = tmp_path / "mobilenetv2_100.pth"
    torch.save(source.model.state_dict(), path)  # timm's layout, as published
    model = smp.Unet("tu-lw_mobilenet_v2", encoder_weights=True, classes=2, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = model.encoder.model.backbone.model.state_dict()
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(loaded[key], value)


def test_imagenet_weights_offline_fail_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not fetch"):
        smp.Unet("tu-lw_mobilenet_v2", encoder_weights=True, classes=2)


@pytest.mark.parametrize("weights", ["imagenet", "/some/file.pth"])
def test_lw_weights_name_the_timm_path(weights):
    match = r"not available for .lw-mobilenet_v2.*tu-lw_mobilenet_v2.*encoder_weights=True"
    with pytest.raises(ValueError, match=match):
        smp.Unet("lw-mobilenet_v2", encoder_weights=weights, classes=2)


def test_smps_table_path_dilates_and_adapts_channels():
    # smp builds lw- encoders as EncoderClass(**params), then set_in_channels and make_dilated.
    encoder = smp_encoders.get_encoder("lw-mobilenet_v2", in_channels=1, depth=5, weights=None, output_stride=8)
    features = encoder(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8, 8, 8]
    assert encoder.out_channels[0] == 1 and encoder.model.backbone.in_chans == 1


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small", "resnet18", "efficientnet_v2_b0"]
)
def test_timm_built_encoders_script_and_match_eager(name):
    encoder = smp_encoders.get_encoder(f"lw-{name}", depth=5, output_stride=16).eval()
    assert encoder._is_torch_scriptable
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(x)  # before scripting: torch.jit.script puts the stand-in in the eager module too
        scripted = torch.jit.script(encoder)
        for a, b in zip(scripted(x), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["shufflenet_v2", "ghostnet", "xception", "skipblocknet"])
def test_other_encoders_declare_and_refuse_torchscript(name):
    encoder = smp_encoders.get_encoder(f"lw-{name}", depth=5).eval()
    assert encoder._is_torch_scriptable is False
    with pytest.raises(RuntimeError, match="not TorchScript-scriptable.*torch.jit.trace"):
        torch.jit.script(encoder)


def test_unet_with_lw_mobilenet_v2_scripts():
    # smp's Unet declares itself scriptable, so its encoder must script (smp's own model test checks it).
    model = smp.Unet("lw-mobilenet_v2", encoder_weights=None, decoder_channels=(32, 16, 16, 8, 8)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=1e-5, atol=1e-5)


def test_unknown_names_keep_smps_error():
    with pytest.raises(KeyError, match="Wrong encoder name `lw-mobilenetv2`"):
        smp.Unet("lw-mobilenetv2", encoder_weights=None)


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights=None, encoder_depth=6), ValueError, "must be 1 to 5"),
        (lambda: smp.Unet("lw-mobilenet_v2", encoder_weights="coco"), ValueError, "not available"),
        (
            lambda: smp.DeepLabV3("lw-mobilenet_v2", encoder_weights=None, encoder_output_stride=32),
            ValueError,
            "8 or 16",
        ),
        (lambda: smp.Unet("tu-lw_mobilenet_v2", encoder_weights=None, width_mult=0.3), ValueError, "width_mult 0.3"),
        (lambda: smp.Unet("tu-lw_mobilenet_v2", encoder_weights=None, groups=3), ValueError, "width_mult"),
    ],
)
def test_bad_arguments_fail_clearly(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_wrong_channels_and_indivisible_sizes_fail_clearly():
    model = smp.DeepLabV3Plus("lw-mobilenet_v2", encoder_weights=None, decoder_channels=32).eval()
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(RuntimeError, match="divisible by 16"):  # smp's own check, before our encoder runs
        model(torch.randn(1, 3, 50, 64))
