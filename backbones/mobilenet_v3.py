"""MobileNetV3 large and small, wrapping timm.

Howard et al., "Searching for MobileNetV3", ICCV 2019. https://arxiv.org/abs/1905.02244
"""

from __future__ import annotations

from collections.abc import Sequence

from backbones._base import Backbone
from backbones._expansion import build_timm_backbone, resolve_width
from backbones._registry import Pretrained, register_backbone

_PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019"
# width_mult -> timm name. timm's hub has ImageNet weights for large 1.0, small 0.75 and small 1.0.
_LARGE = {0.75: "mobilenetv3_large_075", 1.0: "mobilenetv3_large_100"}
_SMALL = {0.75: "mobilenetv3_small_075", 1.0: "mobilenetv3_small_100"}


def _build(
    name: str,
    table: dict[float, str],
    pretrained: Pretrained,
    output_stride: int,
    out_indices: Sequence[int] | None,
    feature_location: str,
    in_chans: int,
    width_mult: float,
) -> Backbone:
    return build_timm_backbone(
        name=name,
        architecture=f"{name} (width_mult={width_mult})",
        timm_name=resolve_width(name, width_mult, table),
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
    )


@register_backbone("mobilenet_v3_large", paper=_PAPER)
def mobilenet_v3_large(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """MobileNetV3-Large at widths 0.75 and 1.0; taps at strides 2, 4, 8, 16, 32.

    At 1.0x, stage taps have (16, 24, 40, 112, 960) channels and expansion taps (64, 72, 240, 672, 960),
    the 672 one being torchvision SSDLite's C4.
    """
    return _build(
        "mobilenet_v3_large", _LARGE, pretrained, output_stride, out_indices, feature_location, in_chans, width_mult
    )


@register_backbone("mobilenet_v3_small", paper=_PAPER)
def mobilenet_v3_small(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """MobileNetV3-Small at widths 0.75 and 1.0; taps at strides 2, 4, 8, 16, 32.

    At 1.0x, stage taps have (16, 16, 24, 48, 576) channels and expansion taps (16, 72, 96, 288, 576);
    the stride-2 level is the stem output, because the block that downsamples next has no expansion.
    """
    return _build(
        "mobilenet_v3_small", _SMALL, pretrained, output_stride, out_indices, feature_location, in_chans, width_mult
    )
