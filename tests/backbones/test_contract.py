"""The backbone contract, checked over the whole registry (see DESIGN.md)."""

import math

import pytest
import torch

from backbones import create_backbone, list_backbones

NAMES = list_backbones()
# Odd, non-square sizes that no stride divides: every level must be ceil(H / stride) tall.
HEIGHT, WIDTH = 67, 93


def expected_sizes(backbone, height, width):
    return [(math.ceil(height / s), math.ceil(width / s)) for s in backbone.feature_info.strides]


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name, output_stride):
    torch.manual_seed(0)
    backbone = create_backbone(name, output_stride=output_stride)
    info = backbone.feature_info
    assert max(info.strides) == output_stride, f"{name}: deepest stride {max(info.strides)} != OS {output_stride}"
    assert info.strides[0] <= 4, f"{name}: no map at stride 4 or finer ({info.strides})"

    images = torch.randn(2, 3, HEIGHT, WIDTH)
    backbone.train()
    features = backbone(images)
    assert len(features) == len(info)
    assert [f.shape[1] for f in features] == list(info.channels)
    assert [tuple(f.shape[-2:]) for f in features] == expected_sizes(backbone, HEIGHT, WIDTH)
    assert all(f.shape[0] == 2 for f in features)

    sum(f.float().pow(2).mean() for f in features).backward()
    no_grad = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient (unused modules?): {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)

    backbone.eval()
    with torch.no_grad():
        first, second = backbone(images), backbone(images)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_dilation_keeps_weights_and_shallow_levels(name):
    """Dilation only changes strides: the same weights load, and levels above the dilated stages agree."""
    torch.manual_seed(0)
    os32 = create_backbone(name, output_stride=32).eval()
    os8 = create_backbone(name, output_stride=8).eval()
    os8.load_state_dict(os32.state_dict())  # identical parameter shapes and names
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a, b = os32(images), os8(images)
    for level, (fa, fb, stride) in enumerate(zip(a, b, os32.feature_info.strides)):
        if stride <= 4:  # levels before any dilated stage are untouched
            torch.testing.assert_close(fa, fb, msg=f"{name}: level {level} changed with output_stride=8")


@pytest.mark.parametrize("in_chans", [1, 4])
@pytest.mark.parametrize("name", NAMES)
def test_in_chans(name, in_chans):
    backbone = create_backbone(name, in_chans=in_chans).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, in_chans, 48, 64))
    assert [f.shape[1] for f in features] == list(backbone.feature_info.channels)
    with pytest.raises(ValueError, match=f"built for {in_chans}-channel input but got 3 channels"):
        backbone(torch.randn(1, 3, 48, 64))


@pytest.mark.parametrize("name", NAMES)
def test_out_indices(name):
    full = create_backbone(name)
    last = len(full.feature_info) - 1
    picked = create_backbone(name, out_indices=(1, last))
    assert picked.feature_info == full.feature_info.select((1, last))
    with torch.no_grad():
        features = picked.eval()(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(picked.feature_info.channels)
    with pytest.raises(ValueError, match="out of range"):
        create_backbone(name, out_indices=(0, last + 1))


@pytest.mark.parametrize("name", NAMES)
def test_expansion_is_supported_or_clearly_refused(name):
    try:
        backbone = create_backbone(name, feature_location="expansion")
    except ValueError as err:
        assert "expansion" in str(err), f"{name}: unclear refusal: {err}"
        return
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, 67, 93))
    assert [f.shape[1] for f in features] == list(backbone.feature_info.channels)
    assert [tuple(f.shape[-2:]) for f in features] == expected_sizes(backbone, 67, 93)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_offline_error_names_source_and_local_file(name):
    """Offline (as here and in CI), asking for ImageNet weights fails with a message that helps."""
    with pytest.raises((RuntimeError, ValueError)) as info:
        create_backbone(name, pretrained=True)
    assert "pretrained=" in str(info.value), f"{name}: error does not say how to pass a local file: {info.value}"
