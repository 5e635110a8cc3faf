"""MobileNetV2, wrapping timm.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
https://arxiv.org/abs/1801.04381
"""

from __future__ import annotations

from collections.abc import Sequence

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone, resolve_width

# width_mult -> timm name. timm's hub has ImageNet weights for 0.5, 1.0 and 1.4 only.
_TIMM_NAMES = {
    0.35: "mobilenetv2_035",
    0.5: "mobilenetv2_050",
    0.75: "mobilenetv2_075",
    1.0: "mobilenetv2_100",
    1.4: "mobilenetv2_140",
}


@register_backbone(
    "mobilenet_v2",
    paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018",
    variants=[{"width_mult": w} for w in _TIMM_NAMES if w != 1.0],
)
def mobilenet_v2(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """MobileNetV2 at widths 0.35, 0.5, 0.75, 1.0 and 1.4; taps at strides 2, 4, 8, 16, 32.

    Stage taps at 1.0x have (16, 24, 32, 96, 320) channels; expansion taps (SSDLite's) have
    (96, 144, 192, 576, 1280): the expansions of the blocks that downsample next, then the 1280 conv.
    """
    timm_name = resolve_width("mobilenet_v2", width_mult, _TIMM_NAMES)
    return build_timm_backbone(
        name="mobilenet_v2",
        architecture=f"mobilenet_v2 (width_mult={width_mult})",
        timm_name=timm_name,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
    )
