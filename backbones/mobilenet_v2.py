"""MobileNetV2, wrapping timm.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
https://arxiv.org/abs/1801.04381
"""

from __future__ import annotations

from collections.abc import Sequence

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_wrapper import TimmBackbone

# width_mult -> timm name; every one of these has ImageNet weights on timm's hub.
_TIMM_NAMES = {
    0.35: "mobilenetv2_035",
    0.5: "mobilenetv2_050",
    0.75: "mobilenetv2_075",
    1.0: "mobilenetv2_100",
    1.4: "mobilenetv2_140",
}


@register_backbone(
    "mobilenet_v2", paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"
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
    """MobileNetV2 at widths 0.35, 0.5, 0.75, 1.0 and 1.4; taps at strides 2, 4, 8, 16, 32."""
    if width_mult not in _TIMM_NAMES:
        raise ValueError(f"mobilenet_v2 width_mult {width_mult} is not supported; choose one of {sorted(_TIMM_NAMES)}")
    if feature_location != "stage":
        raise NotImplementedError("mobilenet_v2 expansion taps are not implemented yet")
    return TimmBackbone(
        name="mobilenet_v2",
        architecture=f"mobilenet_v2 (width_mult={width_mult})",
        timm_name=_TIMM_NAMES[width_mult],
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        in_chans=in_chans,
    )
