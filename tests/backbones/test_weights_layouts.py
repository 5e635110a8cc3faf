"""pretrained=<file> in every accepted layout: converted weights reproduce the source implementation.

Each source model is built by its own package (torchvision; efficientnet-lite-pytorch for the lukemelas
EfficientNet-PyTorch layout), given random weights and BatchNorm statistics, saved, and loaded into
ours; every feature level ours returns must equal an activation of the source (atol 1e-5), and the
classifier built from the same file must give the source's logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from backbones import WeightsMismatchError, create_backbone
from backbones._layouts import LAYOUTS, detect_layout
from backbones._weights import download_error, read_checkpoint
from backbones.classifier import create_classifier
from tests.backbones.weights_reference import level_differences, module_outputs, randomize_

ATOL = 1e-5

# (our name, family options, torchvision builder)
TORCHVISION_NETS = [
    ("mobilenet_v2", {}, tvm.mobilenet_v2),
    ("mobilenet_v2", {"width_mult": 0.5}, lambda: tvm.mobilenet_v2(width_mult=0.5)),
    ("mobilenet_v3_large", {}, tvm.mobilenet_v3_large),
    ("mobilenet_v3_small", {}, tvm.mobilenet_v3_small),
    ("efficientnet_b0", {}, tvm.efficientnet_b0),
    ("efficientnet_b1", {}, tvm.efficientnet_b1),
    ("efficientnet_b2", {}, tvm.efficientnet_b2),
    ("efficientnet_b3", {}, tvm.efficientnet_b3),
    ("efficientnet_v2_s", {}, tvm.efficientnet_v2_s),
    ("shufflenet_v2", {}, tvm.shufflenet_v2_x1_0),
]
LUKEMELAS_NETS = [
    ("efficientnet_b0", "efficientnet-b0"),
    ("efficientnet_b1", "efficientnet-b1"),
    ("efficientnet_b2", "efficientnet-b2"),
    ("efficientnet_b3", "efficientnet-b3"),
    ("efficientnet_lite0", "efficientnet-lite0"),
]


def _lukemelas(name: str) -> torch.nn.Module:
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install .[dev]")
    # image_size=None: TF "same" padding computed per input (from_name's default is static, for 224x224 only).
    return efficientnet_lite_pytorch.EfficientNet.from_name(name, image_size=None)


def _save(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _check_faithful(name, options, source, path, x, run_source=None, relative=False):
    """Our stage and expansion levels equal source activations; our classifier gives the source's logits.

    With `relative`, differences are divided by the level's largest magnitude (for sources whose
    activation functions round differently from timm's).
    """
    outputs = module_outputs(source, x, run_source)
    locations = ["stage"] if name == "shufflenet_v2" else ["stage", "expansion"]
    for location in locations:
        ours = create_backbone(name, pretrained=path, feature_location=location, **options).eval()
        with torch.no_grad():
            levels = ours(x)
        diffs = level_differences(levels, outputs)
        if relative:
            diffs = [d / level.abs().max().item() for d, level in zip(diffs, levels)]
        assert max(diffs) <= ATOL, f"{name} {options} {location}: max differences per level {diffs}"
    classifier = create_classifier(name, pretrained=path, **options).eval()
    with torch.no_grad():
        expected = (run_source or source)(x)
        logits = classifier(x)
    scale = expected.abs().max().item() if relative else 1.0
    torch.testing.assert_close(logits / scale, expected / scale, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("name", "options", "build"), TORCHVISION_NETS, ids=lambda v: str(v))
def test_torchvision_checkpoint_reproduces_torchvision(tmp_path, name, options, build):
    torch.manual_seed(0)
    source = randomize_(build())
    path = _save(source, tmp_path / "tv.pth")
    _check_faithful(name, options, source, path, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize(("name", "source_name"), LUKEMELAS_NETS)
def test_lukemelas_checkpoint_reproduces_lukemelas(tmp_path, name, source_name):
    torch.manual_seed(0)
    source = randomize_(_lukemelas(source_name))
    path = _save(source, tmp_path / "lukemelas.pth")
    # An odd size: TF "same" padding pads the bottom/right only, which symmetric padding would get wrong.
    x = torch.randn(2, 3, 67, 61)
    if name == "efficientnet_lite0":  # ReLU6: the same operations as ours
        _check_faithful(name, {}, source, path, x)
        return
    # B0-B3 use swish, which lukemelas computes as x * sigmoid(x) and timm as F.silu: 1-ulp differences that
    # grow to ~3e-4 absolute (~5e-6 of the level's magnitude) at the last level. With F.silu in the source
    # the two are identical.
    _check_faithful(name, {}, source, path, x, relative=True)
    silu = torch.nn.SiLU()
    source._swish = silu
    for block in source._blocks:
        block._swish = silu
    _check_faithful(name, {}, source, path, x)
    assert type(create_backbone(name, pretrained=path).model.conv_stem).__name__ == "Conv2dSame"


def test_lukemelas_checkpoint_refuses_symmetric_padding(tmp_path):
    path = _save(_lukemelas("efficientnet-lite0"), tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match="'same' padding.*padding='symmetric' would not reproduce"):
        create_backbone("efficientnet_lite0", pretrained=path, padding="symmetric")
    with pytest.raises(ValueError, match="padding 'valid' is not supported"):
        create_backbone("efficientnet_lite0", padding="valid")


def test_torchvision_mobilenet_v3_uses_its_batchnorm_eps(tmp_path):
    path = _save(tvm.mobilenet_v3_small(), tmp_path / "mnv3.pth")
    loaded = create_backbone("mobilenet_v3_small", pretrained=path)
    default = create_backbone("mobilenet_v3_small")
    assert {m.eps for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    assert {m.eps for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}


@pytest.mark.parametrize(
    ("name", "options", "location"),
    [
        ("mobilenet_v2", {}, "stage"),
        ("mobilenet_v3_small", {}, "expansion"),
        ("efficientnet_b0", {}, "expansion"),
        ("ghostnet", {}, "stage"),
        ("mobilenet_v1", {}, "stage"),
        ("shufflenet_v2", {"width_mult": 0.5}, "stage"),
        ("shufflenet_v1", {}, "stage"),
        ("skipblocknet", {}, "stage"),
    ],
)
def test_own_state_dict_round_trips(tmp_path, name, options, location):
    """Issue 14.6: litedense's own backbone state_dict() (keys under `model.` for wrapped nets) loads back."""
    torch.manual_seed(0)
    trained = randomize_(create_backbone(name, feature_location=location, **options))
    path = tmp_path / "ours.pth"
    torch.save(trained.state_dict(), path)
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "ddp.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = trained(x)
        for file in (path, tmp_path / "ddp.pth"):
            loaded = create_backbone(name, pretrained=file, feature_location=location, **options).eval()
            for a, b in zip(loaded(x), expected):
                torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_every_layout_is_detected(tmp_path):
    cases = {
        "torchvision-mobilenet_v2": tvm.mobilenet_v2(),
        "torchvision-mobilenet_v3": tvm.mobilenet_v3_small(),
        "torchvision-efficientnet": tvm.efficientnet_b0(),
        "torchvision-efficientnet_v2": tvm.efficientnet_v2_s(),
        "torchvision-resnet": tvm.resnet18(),
        "torchvision-shufflenet_v2": tvm.shufflenet_v2_x0_5(),
        "lukemelas-efficientnet": _lukemelas("efficientnet-lite0"),
        "official-shufflenet_v1": create_backbone("shufflenet_v1"),
        "official-skipblocknet": create_backbone("skipblocknet"),
        "litedense": create_backbone("mobilenet_v2"),
    }
    for layout, model in cases.items():
        assert detect_layout(model.state_dict()).name == layout
    timm_keys = {k.removeprefix("model."): v for k, v in create_backbone("xception").state_dict().items()}
    assert detect_layout(timm_keys).name == "timm"
    assert detect_layout(tvm.efficientnet_v2_m().state_dict()).name == "torchvision-efficientnet_v2"
    assert detect_layout(tvm.squeezenet1_1().state_dict()) is None
    assert set(cases) | {"timm"} == set(LAYOUTS)


def test_unrecognised_layout_lists_accepted_layouts(tmp_path):
    path = _save(tvm.squeezenet1_1(), tmp_path / "squeezenet.pth")
    with pytest.raises(WeightsMismatchError) as info:
        create_backbone("mobilenet_v2", pretrained=path)
    message = str(info.value)
    assert "squeezenet.pth" in message and "features.3.squeeze" in message  # the file and its keys
    for layout in LAYOUTS:
        assert layout in message


def test_other_architecture_is_rejected_with_keys_named(tmp_path):
    path = _save(tvm.mobilenet_v3_large(), tmp_path / "mnv3.pth")
    with pytest.raises(
        WeightsMismatchError, match=r"holds the weights of mobilenet_v3_large \(width_mult=1.0\)"
    ) as info:
        create_backbone("mobilenet_v2", pretrained=path)
    assert "missing" in str(info.value) and "blocks." in str(info.value)


def test_other_width_names_the_files_width(tmp_path):
    path = _save(tvm.mobilenet_v2(width_mult=1.4), tmp_path / "mnv2_140.pth")
    with pytest.raises(WeightsMismatchError, match=r"holds the weights of mobilenet_v2 \(width_mult=1.4\)") as info:
        create_backbone("mobilenet_v2", pretrained=path)
    assert "wrong shape" in str(info.value) and "mobilenet_v2 (width_mult=1.0)" in str(info.value)
    path = _save(tvm.efficientnet_b1(), tmp_path / "b1.pth")
    with pytest.raises(WeightsMismatchError, match="holds the weights of efficientnet_b1"):
        create_backbone("efficientnet_b0", pretrained=path)


def test_truncated_and_non_checkpoint_files_are_named(tmp_path):
    good = _save(tvm.mobilenet_v3_small(), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    bad_safetensors = tmp_path / "cut.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for path in (truncated, text, bad_safetensors):
        with pytest.raises(ValueError, match=f"{path}.*(truncated|corrupt)"):
            create_backbone("mobilenet_v3_small", pretrained=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_backbone("mobilenet_v3_small", pretrained=tmp_path / "missing.pth")
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        create_backbone("mobilenet_v3_small", pretrained=tensor_only)


class _WritesAFile:
    """Unpickling this would create a file: proof that a pickle's code ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = _WritesAFile()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": payload}, path)
    with pytest.raises(ValueError, match=r"evil.pth holds pickled Python objects \(io.open\)"):
        create_backbone("mobilenet_v2", pretrained=path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        read_checkpoint(path)
    assert not marker.exists()


def test_offline_error_mentions_convert_and_layouts():
    message = str(download_error("mobilenet_v2 (width_mult=1.0)", "the Hugging Face Hub", OSError("offline")))
    assert "python -m backbones.convert SRC DST" in message
    assert all(layout in message for layout in LAYOUTS)


def test_classifier_needs_a_classifier(tmp_path):
    path = tmp_path / "features.pth"
    torch.save(create_backbone("mobilenet_v2").state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="no classifier"):
        create_classifier("mobilenet_v2", pretrained=path)
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        create_classifier("mobilenet_v2", pretrained=True)


def test_read_checkpoint_rereads_a_changed_file(tmp_path):
    path = _save(tvm.mobilenet_v3_small(), tmp_path / "w.pth")
    assert read_checkpoint(path).layout.name == "torchvision-mobilenet_v3"
    torch.save(tvm.mobilenet_v2().state_dict(), path)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    assert read_checkpoint(path).layout.name == "torchvision-mobilenet_v2"
