"""MobileNetV1, wrapping timm.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
arXiv 2017. https://arxiv.org/abs/1704.04861
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone, resolve_width
from backbones._timm_internals import gen_mobilenet_v1

# width_mult (the paper's alpha) -> timm name; timm registers (and has weights for) 1.0 only.
_TIMM_NAMES = {0.25: "mobilenetv1_025", 0.5: "mobilenetv1_050", 0.75: "mobilenetv1_075", 1.0: "mobilenetv1_100"}
_REGISTERED = {"mobilenetv1_100"}


@register_backbone(
    "mobilenet_v1",
    paper="Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications, 2017",
    variants=[{"width_mult": w} for w in _TIMM_NAMES if w != 1.0],
    channels_last=False,  # its training step is 1.30x slower in NHWC on CPU (benchmarks/memory_format.py)
)
def mobilenet_v1(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """MobileNetV1 at widths 0.25, 0.5, 0.75 and 1.0; taps at strides 2, 4, 8, 16, 32.

    Stage taps at 1.0x have (64, 128, 256, 512, 1024) channels. It has no expansion layers.
    """
    timm_name = resolve_width("mobilenet_v1", width_mult, _TIMM_NAMES)
    create_fn = None
    if timm_name not in _REGISTERED:
        # timm's own generator at another channel multiplier; the named cfg keeps timm from warning.
        create_fn = partial(gen_mobilenet_v1, timm_name, width_mult, pretrained_cfg={"architecture": timm_name})
    return build_timm_backbone(
        name="mobilenet_v1",
        architecture=f"mobilenet_v1 (width_mult={width_mult})",
        timm_name=timm_name,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
        create_fn=create_fn,
        has_expansions=False,
    )
