"""MobileNetV3 large and small, wrapping timm; optionally with the detection paper's reduced tail.

Howard et al., "Searching for MobileNetV3", ICCV 2019. https://arxiv.org/abs/1905.02244

`reduced_tail=True` halves the channels of the last stage (the blocks after C4 and the final 1x1 conv), as
the paper's section 6.1.1 does for SSDLite ("we reduce the channels of all feature layers between C4 and
C5 by 2") and torchvision's `_mobilenet_v3_conf(reduced_tail=True)` does for `ssdlite320_mobilenet_v3_large`.
The network is built by timm's own MobileNetV3 builder from timm's architecture definition with that
stage halved, so modules and state-dict keys keep timm's layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from torch import nn

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone, resolve_width
from backbones._timm_internals import (
    SqueezeExcite,
    create_mnv3,
    decode_arch_def,
    resolve_act_layer,
    resolve_bn_args,
    round_channels,
)
from backbones._weights import apply_layout_bn_eps

_PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019"
# width_mult -> timm name. timm's hub has ImageNet weights for large 1.0, small 0.75 and small 1.0.
_LARGE = {0.75: "mobilenetv3_large_075", 1.0: "mobilenetv3_large_100"}
_SMALL = {0.75: "mobilenetv3_small_075", 1.0: "mobilenetv3_small_100"}

# timm's architecture definitions (timm/models/mobilenetv3.py, `_gen_mobilenet_v3`, the non-minimal nets):
# one list per stage, the last two stages being the C4 -> C5 inverted residuals and the final 1x1 conv.
_LARGE_ARCH = (
    ("ds_r1_k3_s1_e1_c16_nre",),
    ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
    ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112_se0.25",),
    ("ir_r3_k5_s2_e6_c160_se0.25",),
    ("cn_r1_k1_s1_c960",),
)
_SMALL_ARCH = (
    ("ds_r1_k3_s2_e1_c16_se0.25_nre",),
    ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
    ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"),
    ("ir_r2_k5_s1_e3_c48_se0.25",),
    ("ir_r3_k5_s2_e6_c96_se0.25",),
    ("cn_r1_k1_s1_c576",),
)
# timm's classifier widths (after the pooling; not built for features, kept for the same model kwargs).
_NUM_FEATURES = {"large": 1280, "small": 1024}


def _variants(widths: dict[float, str]) -> list[dict]:
    """The named non-default settings: every width, with and without the reduced tail."""
    defaults = {"width_mult": 1.0, "reduced_tail": False}
    settings = [{"width_mult": w, "reduced_tail": r} for w in sorted(widths) for r in (False, True)]
    changed = [{k: v for k, v in s.items() if v != defaults[k]} for s in settings]
    return [s for s in changed if s]


def reduce_tail(arch_def: Sequence[Sequence[str]]) -> list[list[str]]:
    """Halve the output channels of the last two stages of a timm MobileNetV3 architecture definition.

    The expansion ratios stay: the first block of the last stage still expands its (unchanged) input 6x
    (672 channels for -Large, torchvision's C4), the others expand the halved width 6x (480 = 960 / 2),
    exactly torchvision's `_mobilenet_v3_conf(reduced_tail=True)`.

    Args:
        arch_def: timm block strings per stage, e.g. `[["ir_r3_k5_s2_e6_c160_se0.25"], ["cn_r1_k1_s1_c960"]]`.

    Returns:
        The definition with `_c<n>` replaced by `_c<n // 2>` in its last two stages.
    """
    halve = partial(re.sub, r"_c(\d+)", lambda m: f"_c{int(m.group(1)) // 2}")
    stages = [list(stage) for stage in arch_def]
    return stages[:-2] + [[halve(block) for block in stage] for stage in stages[-2:]]


def create_mobilenet_v3(timm_name: str, *, reduced_tail: bool = False, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build timm's MobileNetV3 from its architecture definition, optionally with the reduced tail.

    Mirrors timm's `_gen_mobilenet_v3` (same blocks, SE, activations, rounding), from our copy of its
    architecture definition, so the last stage can be halved.

    Args:
        timm_name: "mobilenetv3_large_100", "mobilenetv3_small_075", ... (size and width).
        reduced_tail: Halve the last stage (see `reduce_tail`).
        pretrained: Must be False: timm publishes no reduced-tail weights (`create_timm_model` checks).
        **kwargs: timm model arguments (features_only, output_stride, in_chans, bn_eps, ...).

    Returns:
        A timm `MobileNetV3` (or `MobileNetV3Features` with `features_only=True`).
    """
    size = "small" if "small" in timm_name else "large"
    arch_def = _SMALL_ARCH if size == "small" else _LARGE_ARCH
    num_features = _NUM_FEATURES[size]
    if reduced_tail:
        arch_def, num_features = reduce_tail(arch_def), num_features // 2
    multiplier = int(timm_name.rsplit("_", 1)[1]) / 100
    model_kwargs = dict(
        block_args=decode_arch_def([list(stage) for stage in arch_def]),
        num_features=num_features,
        stem_size=16,
        fix_stem=multiplier < 0.75,
        round_chs_fn=partial(round_channels, multiplier=multiplier),
        norm_layer=partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, "hard_swish"),
        se_layer=partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels),
        **kwargs,
    )
    # timm's variant name only picks the pretrained config (normalisation etc.), never loaded here.
    return create_mnv3(timm_name, pretrained, **model_kwargs)


def _build(
    name: str,
    table: dict[float, str],
    pretrained: Pretrained,
    output_stride: int,
    out_indices: Sequence[int] | None,
    feature_location: str,
    in_chans: int,
    width_mult: float,
    reduced_tail: bool,
) -> Backbone:
    timm_name = resolve_width(name, width_mult, table)
    if not reduced_tail:
        backbone = build_timm_backbone(
            name=name,
            architecture=f"{name} (width_mult={width_mult})",
            timm_name=timm_name,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=out_indices,
            feature_location=feature_location,
            in_chans=in_chans,
        )
        return apply_layout_bn_eps(backbone, pretrained)  # torchvision's files: BatchNorm eps 1e-3
    architecture = f"{name} (width_mult={width_mult}, reduced_tail=True)"
    if pretrained is True:
        raise ValueError(
            f"no ImageNet weights are published for {architecture}: timm's hub has MobileNetV3 weights for the "
            f"full tail only; use reduced_tail=False with pretrained=True, pretrained=False, or a local file in "
            f"timm's layout as pretrained='/path/to/weights.pth'"
        )
    create_fn = partial(create_mobilenet_v3, timm_name, reduced_tail=True)
    backbone = build_timm_backbone(
        name=name,
        architecture=architecture,
        timm_name=timm_name,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
        create_fn=create_fn,
        mobilenetv3=True,
    )
    return apply_layout_bn_eps(backbone, pretrained)


@register_backbone("mobilenet_v3_large", paper=_PAPER, variants=_variants(_LARGE))
def mobilenet_v3_large(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
) -> Backbone:
    """MobileNetV3-Large at widths 0.75 and 1.0; taps at strides 2, 4, 8, 16, 32.

    At 1.0x, stage taps have (16, 24, 40, 112, 960) channels and expansion taps (64, 72, 240, 672, 960),
    the 672 one being torchvision SSDLite's C4. With `reduced_tail=True` (the paper's detection backbone,
    torchvision's `ssdlite320_mobilenet_v3_large`; no hub weights) the last level has 480 channels.
    """
    return _build(
        "mobilenet_v3_large",
        _LARGE,
        pretrained,
        output_stride,
        out_indices,
        feature_location,
        in_chans,
        width_mult,
        reduced_tail,
    )


@register_backbone("mobilenet_v3_small", paper=_PAPER, variants=_variants(_SMALL))
def mobilenet_v3_small(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
) -> Backbone:
    """MobileNetV3-Small at widths 0.75 and 1.0; taps at strides 2, 4, 8, 16, 32.

    At 1.0x, stage taps have (16, 16, 24, 48, 576) channels and expansion taps (16, 72, 96, 288, 576);
    the stride-2 level is the stem output, because the block that downsamples next has no expansion.
    With `reduced_tail=True` (no hub weights) the last level has 288 channels.
    """
    return _build(
        "mobilenet_v3_small",
        _SMALL,
        pretrained,
        output_stride,
        out_indices,
        feature_location,
        in_chans,
        width_mult,
        reduced_tail,
    )
