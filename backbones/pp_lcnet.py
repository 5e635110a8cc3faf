"""PP-LCNet, wrapping timm.

Cui et al., "PP-LCNet: A Lightweight CPU Convolutional Neural Network", arXiv 2021.
https://arxiv.org/abs/2109.15099
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone, resolve_width
from backbones._timm_internals import gen_lcnet

# width_mult (PaddleClas' scale) -> timm name; timm registers 0.35 to 1.5 (weights for 0.5, 0.75, 1.0).
_TIMM_NAMES = {
    0.25: "lcnet_025",
    0.35: "lcnet_035",
    0.5: "lcnet_050",
    0.75: "lcnet_075",
    1.0: "lcnet_100",
    1.5: "lcnet_150",
    2.0: "lcnet_200",
    2.5: "lcnet_250",
}
_REGISTERED = {"lcnet_035", "lcnet_050", "lcnet_075", "lcnet_100", "lcnet_150"}


@register_backbone(
    "pp_lcnet",
    paper="Cui et al., PP-LCNet: A Lightweight CPU Convolutional Neural Network, 2021",
    variants=[{"width_mult": w} for w in _TIMM_NAMES if w != 1.0],
    channels_last=False,  # its training step is 1.16x slower in NHWC on CPU (benchmarks/memory_format.py)
)
def pp_lcnet(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """PP-LCNet at widths 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0 and 2.5; taps at strides 2, 4, 8, 16, 32.

    Stage taps at 1.0x have (32, 64, 128, 256, 512) channels. It has no expansion layers.
    """
    timm_name = resolve_width("pp_lcnet", width_mult, _TIMM_NAMES)
    create_fn = None
    if timm_name not in _REGISTERED:
        create_fn = partial(gen_lcnet, timm_name, width_mult, pretrained_cfg={"architecture": timm_name})
    return build_timm_backbone(
        name="pp_lcnet",
        architecture=f"pp_lcnet (width_mult={width_mult})",
        timm_name=timm_name,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
        create_fn=create_fn,
        has_expansions=False,
    )
