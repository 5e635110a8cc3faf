"""Registry, FeatureInfo, dilation plan and safe weight loading."""

import pickle

import pytest
import torch
from torch import nn

import backbones
from backbones import FeatureInfo, WeightsMismatchError, create_backbone, list_backbones, read_state_dict
from backbones._dilation import dilation_plan, running_strides
from backbones._weights import load_checked

# The names the project promises (issue 2); the registry must hold every one.
PROMISED = [
    "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "ghostnet", "skipblocknet",
    "xception", "xception65", "shufflenet_v1", "shufflenet_v2", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_lite0", "pp_lcnet",
]  # fmt: skip


def test_every_promised_name_is_registered():
    missing = sorted(set(PROMISED) - set(list_backbones()))
    assert not missing, f"not registered: {missing}"


def test_list_backbones_pattern():
    assert set(list_backbones("mobilenet_v3*")) <= {"mobilenet_v3_large", "mobilenet_v3_small"}
    assert list_backbones("no_such_*") == []


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean 'mobilenet_v2'"):
        create_backbone("mobilenetv2")


def test_unsupported_output_stride_and_location_and_option():
    with pytest.raises(ValueError, match="unsupported output_stride 4"):
        create_backbone("mobilenet_v2", output_stride=4)
    with pytest.raises(ValueError, match="unknown feature_location"):
        create_backbone("mobilenet_v2", feature_location="middle")
    with pytest.raises(ValueError, match="does not take the option"):
        create_backbone("mobilenet_v2", groups=3)
    with pytest.raises(ValueError, match="width_mult 0.6"):
        create_backbone("mobilenet_v2", width_mult=0.6)


def test_register_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone("mobilenet_v2", paper="x")(lambda **kw: None)


VARIANTS = [(n, v) for n in list_backbones() for v in backbones.get_backbone_entry(n).variants]


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{v}" for n, v in VARIANTS])
def test_every_declared_variant_builds_and_changes_the_network(name, options):
    # The drop-in names each variant as an smp encoder: each must build, and differ from the default net.
    with torch.device("meta"):
        default = create_backbone(name)
        variant = create_backbone(name, **options)
    assert variant.feature_info.strides == default.feature_info.strides
    n_params = [sum(p.numel() for p in m.parameters()) for m in (default, variant)]
    assert variant.feature_info.channels != default.feature_info.channels or n_params[0] != n_params[1]


@pytest.mark.parametrize(
    "variants,match",
    [([{"depth": 3}], "must change"), ([{"width_mult": 1.0}], "must change"), ([{}], "must change")],
)
def test_variants_must_name_a_non_default_family_setting(variants, match):
    def builder(*, pretrained=False, output_stride=32, out_indices=None, feature_location="stage", in_chans=3,
                width_mult=1.0):  # fmt: skip
        raise AssertionError("not built")

    with pytest.raises(ValueError, match=match):
        backbones.register_backbone("_test_bad_variant", paper="-", variants=variants)(builder)
    assert "_test_bad_variant" not in list_backbones()


def test_wrong_input_channels_and_rank():
    backbone = create_backbone("mobilenet_v2")
    with pytest.raises(ValueError, match="3-channel input but got 4"):
        backbone(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        backbone(torch.randn(3, 32, 32))


def test_feature_info_validation():
    info = FeatureInfo([16, 32], [4, 8])
    assert info.channels == (16, 32) and len(info) == 2
    assert info.select([1]) == FeatureInfo((32,), (8,))
    assert info.index_of_stride(8) == 1
    with pytest.raises(ValueError, match="non-decreasing"):
        FeatureInfo((16, 32), (8, 4))
    with pytest.raises(ValueError, match="one stride per channel"):
        FeatureInfo((16, 32), (8,))


def test_dilation_plan_follows_deeplab():
    # OS 16: the last stage keeps stride 1 and dilation 1 on its first layer, 2 after it.
    assert dilation_plan([2, 2, 2, 2, 2], 16)[-1] == (1, 1, 2)
    assert dilation_plan([2, 2, 2, 2, 2], 8)[-2:] == [(1, 1, 2), (1, 2, 4)]
    assert running_strides([2, 2, 2, 2, 2], 8) == [2, 4, 8, 8, 8]
    assert dilation_plan([2, 2, 2, 2, 2], 32) == [(2, 1, 1)] * 5


def test_read_state_dict_unwraps_and_refuses_pickles(tmp_path):
    weights = {"conv.weight": torch.ones(2, 3, 1, 1)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    assert read_state_dict(tmp_path / "wrapped.pth").keys() == weights.keys()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv.weight": Evil()}, f)
    with pytest.raises(ValueError, match="(refuses|not a readable)"):
        read_state_dict(tmp_path / "evil.pth")
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="truncated.pth"):
        read_state_dict(tmp_path / "truncated.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")


def test_load_checked_names_mismatching_keys():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    load_checked(
        model, {**good, "classifier.weight": torch.zeros(1)}, source="f", architecture="a", ignore=["classifier.*"]
    )
    bad = dict(good)
    bad.pop("1.weight")
    bad["0.weight"] = torch.zeros(8, 3, 5, 5)
    bad["head.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError) as info:
        load_checked(model, bad, source="other.pth", architecture="tiny")
    message = str(info.value)
    assert "other.pth" in message and "1.weight" in message and "head.weight" in message
    assert "0.weight (8, 3, 5, 5) vs expected (8, 3, 3, 3)" in message
