"""python -m backbones.convert SRC DST: safetensors in the layout we load, same features as SRC."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from safetensors import safe_open

from backbones import create_backbone
from backbones._weights import CONVERTED_FROM_KEY
from backbones.classifier import create_classifier
from backbones.convert import convert_file, main
from tests.backbones.weights_reference import randomize_


def _features(name, path, **options):
    backbone = create_backbone(name, pretrained=path, **options).eval()
    with torch.no_grad():
        return backbone(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    ("name", "options", "build", "layout"),
    [
        ("mobilenet_v3_small", {}, tvm.mobilenet_v3_small, "torchvision-mobilenet_v3"),  # needs BatchNorm eps 1e-3
        ("mobilenet_v2", {}, tvm.mobilenet_v2, "torchvision-mobilenet_v2"),
        ("shufflenet_v2", {"width_mult": 0.5}, tvm.shufflenet_v2_x0_5, "torchvision-shufflenet_v2"),
        ("efficientnet_lite0", {}, None, "lukemelas-efficientnet"),  # needs "same" padding
    ],
)
def test_converted_file_loads_like_the_source(tmp_path, capsys, name, options, build, layout):
    torch.manual_seed(0)
    if build is None:
        lukemelas = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install .[dev]")
        build = lambda: lukemelas.EfficientNet.from_name("efficientnet-lite0", image_size=None)  # noqa: E731
    src, dst = tmp_path / "src.pth", tmp_path / "out" / "dst.safetensors"
    torch.save(randomize_(build()).state_dict(), src)
    assert main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert layout in printed and str(dst) in printed and "classifier included" in printed
    assert [p.name for p in dst.parent.iterdir()] == ["dst.safetensors"]  # no temporary file left
    with safe_open(str(dst), framework="pt") as file:
        assert file.metadata()[CONVERTED_FROM_KEY] == layout
        keys = set(file.keys())
    assert {"classifier.weight", "fc.weight"} & keys  # the classifier came along
    for a, b in zip(_features(name, src, **options), _features(name, dst, **options)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    again = tmp_path / "again.safetensors"  # converting a converted file keeps its origin
    convert_file(dst, again)
    with safe_open(str(again), framework="pt") as file:
        assert file.metadata()[CONVERTED_FROM_KEY] == layout
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            create_classifier(name, pretrained=src, **options).eval()(x),
            create_classifier(name, pretrained=again, **options).eval()(x),
        )


def test_timm_keys_are_written_for_timm_families(tmp_path):
    src, dst = tmp_path / "tv.pth", tmp_path / "mnv2.safetensors"
    torch.save(tvm.mobilenet_v2().state_dict(), src)
    convert_file(src, dst)
    import timm

    with safe_open(str(dst), framework="pt") as file:
        keys = set(file.keys())
    expected = {k for k in timm.create_model("mobilenetv2_100").state_dict()}
    assert keys == expected


def test_bad_inputs_fail_with_the_file_named(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    assert main([str(text), str(tmp_path / "x.safetensors")]) == 1
    assert "notes.pth is not a readable PyTorch checkpoint" in capsys.readouterr().err
    unknown = tmp_path / "squeezenet.pth"  # a layout litedense does not read
    torch.save(tvm.squeezenet1_1().state_dict(), unknown)
    assert main([str(unknown), str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "none litedense recognises" in err and "torchvision-mobilenet_v2" in err
    with pytest.raises(ValueError, match="safetensors"):
        convert_file(unknown, tmp_path / "x.pth")
    assert not (tmp_path / "x.safetensors").exists()
