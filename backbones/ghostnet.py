"""GhostNet (v1), wrapping timm's network and adding what timm refuses: dilation and per-resolution taps.

Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020.
https://arxiv.org/abs/1911.11907

timm builds GhostNet only at output stride 32, and its `features_only` taps are the first bottleneck
of each resolution (plus the stem convolution before its batch norm), so the stride-16 and stride-32
maps skip most of the network. Here the timm classifier network is built at stride 32 and used as is
(its checkpoints load unchanged); the stride-16/32 stages are dilated in place with DeepLab's rule and
the taps are the last layer of each resolution, as for timm's MobileNetV3 (which GhostNet follows).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from backbones._base import Backbone, resolve_out_indices
from backbones._dilation import dilate_stage_, dilation_plan, running_strides
from backbones._features import FeatureInfo
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import create_timm_model
from backbones._weights import load_checked, read_state_dict

# width_mult -> timm name. Only the 1.0x network has published ImageNet weights (timm's hub).
_TIMM_NAMES = {0.5: "ghostnet_050", 1.0: "ghostnet_100", 1.3: "ghostnet_130"}
_HAS_WEIGHTS = {1.0}
# Checkpoint keys of the classifier (after global pooling) that a feature extractor drops.
_HEAD_KEYS = ("conv_head.*", "classifier.*")

# timm's GhostNet.blocks holds 10 stages: 0 (stride 2), 1-2 (stride 4), 3-4 (stride 8), 5-6 (stride 16),
# 7-9 (stride 32; 9 is the final 1x1 conv, 960 channels at width 1.0). Stages 1, 3, 5 and 7 are single
# strided bottlenecks.
_STRIDED_STAGES = (1, 3, 5, 7)
_NUM_STAGES = 10
_STEM = -1
# "stage" taps: the stem activation, then the output of the last stage of each resolution.
_STAGE_TAPS = (_STEM, 2, 4, 6, 9)
# "expansion" taps (as SSDLite taps MobileNetV2): the expansion (ghost1) output of the first bottleneck
# of the next resolution, still at this resolution; the last level is the final 1x1 conv.
_EXPANSION_TAPS = (1, 3, 5, 7, 9)


def _finish_bottleneck(block: nn.Module, x: Tensor, expanded: Tensor) -> Tensor:
    """The rest of timm's `GhostBottleneck.forward` after its expansion `ghost1(x)` (kept in step with timm)."""
    out = expanded
    if block.conv_dw is not None:
        out = block.bn_dw(block.conv_dw(out))
    if block.se is not None:
        out = block.se(out)
    return block.ghost2(out) + block.shortcut(x)


class GhostNetBackbone(Backbone):
    """timm's GhostNet v1 as a multi-scale feature extractor with output stride 32, 16 or 8.

    `self.model` is timm's `GhostNet` without its classifier, so its keys are timm's checkpoint keys.

    Args:
        width_mult: 0.5, 1.0 or 1.3.
        pretrained: False, True (timm's hub, width 1.0 only) or a local file in timm's layout.
        output_stride: 8, 16 or 32.
        out_indices: Levels to return (of 5), None for all.
        feature_location: "stage" (end of each resolution) or "expansion" (ghost1 outputs).
        in_chans: Input channels.
    """

    def __init__(
        self,
        *,
        width_mult: float,
        pretrained: Pretrained,
        output_stride: int,
        out_indices: Sequence[int] | None,
        feature_location: str,
        in_chans: int,
    ) -> None:
        super().__init__()
        if width_mult not in _TIMM_NAMES:
            raise ValueError(f"ghostnet width_mult {width_mult} is not supported; choose one of {sorted(_TIMM_NAMES)}")
        self.name, self.in_chans, self.output_stride = "ghostnet", in_chans, output_stride
        timm_name = _TIMM_NAMES[width_mult]
        architecture = f"ghostnet (width_mult={width_mult})"
        self.model = create_timm_model(
            timm_name,
            architecture=architecture,
            pretrained=pretrained,
            pretrained_available=width_mult in _HAS_WEIGHTS,
            in_chans=in_chans,
        )
        # Only the feature extractor stays: no parameter may go without a gradient.
        self.model.reset_classifier(0)
        self.model.conv_head = nn.Identity()
        if pretrained not in (False, True, None):
            load_checked(
                self.model,
                read_state_dict(pretrained),
                source=os.fspath(pretrained),
                architecture=f"{architecture} (timm '{timm_name}' layout)",
                ignore=_HEAD_KEYS,
                in_chans=in_chans,
                stem_keys=("conv_stem.weight",),
            )
        strides = _dilate_(self.model.blocks, output_stride)

        expansion = feature_location == "expansion"
        tap_stages = _EXPANSION_TAPS if expansion else _STAGE_TAPS
        all_info = FeatureInfo(_tap_channels(self.model, tap_stages, expansion), tuple(strides))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), self.name)
        self.feature_info = all_info.select(self.out_indices)
        taps = [tap_stages[i] for i in self.out_indices]
        last_stage = max(taps)
        # A tap on a bottleneck's expansion: the bottleneck runs in two parts there (see forward_features).
        self._expand_at = frozenset(t for t in taps if expansion and t != _NUM_STAGES - 1)
        self._output_at = frozenset(t for t in taps if t not in self._expand_at)
        self._prune_(last_stage)

    def _prune_(self, last_stage: int) -> None:
        """Drop the layers after the deepest tap, so every parameter feeds some returned map."""
        self.model.blocks = self.model.blocks[: last_stage + 1]
        if last_stage in self._expand_at:
            block = self.model.blocks[last_stage][0]
            block.conv_dw = block.bn_dw = block.se = block.ghost2 = block.shortcut = None

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> selected maps, see `Backbone.forward`."""
        x = self.model.act1(self.model.bn1(self.model.conv_stem(x)))  # (N, C0, H/2, W/2)
        features = [x] if _STEM in self._output_at else []
        for index, stage in enumerate(self.model.blocks):
            if index in self._expand_at:
                block = stage[0]  # the strided stages hold exactly one bottleneck
                expanded = block.ghost1(x)  # (N, mid, H/s, W/s): still at the previous resolution
                features.append(expanded)
                if block.ghost2 is None:  # pruned: nothing deeper is needed
                    break
                x = _finish_bottleneck(block, x, expanded)
            else:
                x = stage(x)
            if index in self._output_at:
                features.append(x)
        return features


def _dilate_(blocks: nn.Sequential, output_stride: int) -> list[int]:
    """Trade the strides of the deepest resolutions for dilation, in place.

    `dilate_stage_` fits GhostBottleneck: it visits ghost1 (runs before the stride), the strided
    depthwise conv_dw, ghost2 (after it) and the shortcut's strided depthwise conv (on the block
    input) in that order, so the first three get first_dilation, first_dilation, dilation and the
    shortcut, being strided, first_dilation.

    Returns:
        The stride of each of the 5 levels after dilation.
    """
    plan = dilation_plan((2, 2, 2, 2, 2), output_stride)  # stem, then the four strided stages
    bounds = (*_STRIDED_STAGES, _NUM_STAGES)
    for level, (stride, first_dilation, dilation) in enumerate(plan[1:]):
        if stride == 2:
            continue
        first, end = bounds[level], bounds[level + 1]
        dilate_stage_(blocks[first], first_dilation, dilation)
        for index in range(first + 1, end):
            dilate_stage_(blocks[index], dilation, dilation)
    return running_strides((2, 2, 2, 2, 2), output_stride)


def _tap_channels(model: nn.Module, tap_stages: Sequence[int], expansion: bool) -> tuple[int, ...]:
    """Channels of each tap, read from the built modules."""
    channels = []
    for stage in tap_stages:
        if stage == _STEM:
            channels.append(model.conv_stem.out_channels)
        elif expansion and stage != _NUM_STAGES - 1:
            channels.append(model.blocks[stage][0].ghost1.out_chs)
        else:
            last = model.blocks[stage][-1]  # a GhostBottleneck, or the final ConvBnAct
            channels.append(last.ghost2.out_chs if hasattr(last, "ghost2") else last.conv.out_channels)
    return tuple(channels)


@register_backbone(
    "ghostnet",
    paper="Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020",
    variants=[{"width_mult": w} for w in _TIMM_NAMES if w != 1.0],
    channels_last=False,  # its training step is 1.12x slower in NHWC on CPU (benchmarks/memory_format.py)
)
def ghostnet(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """GhostNet v1 at widths 0.5, 1.0 and 1.3 (timm ghostnet_050/100/130); taps at strides 2, 4, 8, 16, 32.

    "stage" taps: stem activation, then the last layer of each resolution (16, 24, 40, 112, 960
    channels at width 1.0). "expansion" taps: the ghost1 expansion of the first bottleneck of the next
    resolution (48, 72, 240, 672) and the final 1x1 conv (960).
    """
    return GhostNetBackbone(
        width_mult=width_mult,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
    )
