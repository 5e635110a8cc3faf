"""Building blocks shared by our ShuffleNetV1 and ShuffleNetV2: units that can trade stride for dilation.

The module and parameter names reproduce the reference implementations exactly, so their checkpoints
load unchanged: ShuffleNetV1 follows the authors' megvii-model/ShuffleNet-Series (`branch_main_1`,
`branch_main_2`, `branch_proj`), ShuffleNetV2 follows torchvision (`branch1`, `branch2`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from backbones._base import Backbone, resolve_out_indices
from backbones._dilation import dilation_plan, running_strides
from backbones._features import FeatureInfo

# Downsampling factor of each tap: stem conv, max-pool, stage 2, stage 3, stage 4.
LEVEL_STRIDES = (2, 2, 2, 2, 2)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave `groups` equal blocks of channels (the paper's reshape-transpose-flatten).

    Args:
        x: (N, C, H, W) with C divisible by `groups`.
        groups: Number of channel blocks.

    Returns:
        (N, C, H, W): channel `g * (C // groups) + i` moves to `i * groups + g`.
    """
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)  # (N, G, C/G, H, W)
    return x.transpose(1, 2).contiguous().view(n, c, h, w)


def stage_dilations(output_stride: int) -> tuple[list[tuple[int, int, int]], tuple[int, ...]]:
    """Per-stage (stride, first_dilation, dilation) of stages 2-4 and the running stride of all 5 levels.

    Args:
        output_stride: 8, 16 or 32.

    Returns:
        The plan of the three stages and the strides of the five taps.
    """
    plan = dilation_plan(LEVEL_STRIDES, output_stride)
    # The stem and max-pool always downsample (output_stride >= 8 > 4).
    assert all(stride == 2 for stride, _, _ in plan[:2]), plan
    return plan[2:], tuple(running_strides(LEVEL_STRIDES, output_stride))


class ShuffleV1Block(nn.Module):
    """ShuffleNetV1 unit (Zhang et al., CVPR 2018, Fig. 2b/c) in the official code's layout.

    Pointwise group conv -> BN -> ReLU -> depthwise 3x3 -> BN -> channel shuffle -> pointwise group conv
    -> BN. A stride-1 unit adds the input and applies ReLU; a downsampling unit concatenates a 3x3
    average-pooled shortcut with the ReLU'd main branch. Under dilation the downsampling unit keeps
    its concatenation but uses stride 1 in both branches.

    Args:
        inp: Input channels.
        oup: Output channels.
        groups: Groups of the pointwise convolutions.
        first_group: Whether this is stage 2's first unit, whose first pointwise conv is not grouped
            (its input has only 24 channels; paper Sec. 3.3).
        downsample: Whether this is a stage's first unit (concatenating shortcut).
        stride: 2, or 1 when dilation replaces the stride.
        dilation: Dilation of the depthwise conv.
    """

    def __init__(
        self, inp: int, oup: int, *, groups: int, first_group: bool, downsample: bool, stride: int, dilation: int
    ) -> None:
        super().__init__()
        self.groups, self.downsample = groups, downsample
        mid = oup // 4
        outputs = oup - inp if downsample else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid, 1, bias=False, groups=1 if first_group else groups),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, padding=dilation, dilation=dilation, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid, outputs, 1, bias=False, groups=groups),
            nn.BatchNorm2d(outputs),
        )
        if downsample:
            # count_include_pad=True (the default) as in the official code; padding 1 keeps ceil(H / stride).
            self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, inp, H, W) -> (N, oup, ceil(H / stride), ceil(W / stride))."""
        out = self.branch_main_1(x)  # (N, mid, H', W')
        if self.groups > 1:
            # The official code reshapes to (N, C/g, g, H, W) before transposing, the inverse of the
            # paper's (N, g, C/g, H, W) permutation; its checkpoints were trained with it.
            out = channel_shuffle(out, out.shape[1] // self.groups)
        out = self.branch_main_2(out)  # (N, outputs, H', W')
        if self.downsample:
            return torch.cat((self.branch_proj(x), torch.relu(out)), 1)  # (N, inp + outputs, H', W')
        return torch.relu(out + x)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit (Ma et al., ECCV 2018, Fig. 3c/d) in torchvision's `InvertedResidual` layout.

    A basic unit splits the channels in half, transforms one half (1x1, depthwise 3x3, 1x1) and
    concatenates; a downsampling unit feeds the whole input to both branches. Both end in a channel
    shuffle with 2 groups. Under dilation the downsampling unit keeps both branches with stride 1.

    Args:
        inp: Input channels.
        oup: Output channels (even).
        downsample: Whether this is a stage's first unit (two branches).
        stride: 2, or 1 when dilation replaces the stride.
        dilation: Dilation of the depthwise convs.
    """

    def __init__(self, inp: int, oup: int, *, downsample: bool, stride: int, dilation: int) -> None:
        super().__init__()
        self.downsample = downsample
        half = oup // 2
        if downsample:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, padding=dilation, dilation=dilation, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()  # kept (empty) so module indices match torchvision
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if downsample else half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, padding=dilation, dilation=dilation, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, inp, H, W) -> (N, oup, ceil(H / stride), ceil(W / stride))."""
        if self.downsample:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)  # (N, oup, H', W')
        else:
            x1, x2 = x.chunk(2, dim=1)  # 2 x (N, oup / 2, H, W)
            out = torch.cat((x1, self.branch2(x2)), 1)
        return channel_shuffle(out, 2)


class LevelBackbone(Backbone):
    """A Backbone computed as five consecutive levels, returning the ones `out_indices` selects.

    Subclasses build their modules, then call `_finish`, and implement `_levels`, which lists each
    level's modules in execution order.
    """

    out_indices: tuple[int, ...]

    def _levels(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    def _finish(
        self, channels: Sequence[int], strides: Sequence[int], out_indices: Sequence[int] | None
    ) -> tuple[int, ...]:
        """Set `out_indices` and `feature_info`; returns the selected indices."""
        all_info = FeatureInfo(tuple(channels), tuple(strides))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), self.name)
        self.feature_info = all_info.select(self.out_indices)
        return self.out_indices

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> selected maps, see `Backbone.forward`."""
        features = []
        # Modules past the deepest selected level were removed at build time; stop before them.
        for level, modules in enumerate(self._levels()[: self.out_indices[-1] + 1]):
            for module in modules:
                x = module(x)
            if level in self.out_indices:
                features.append(x)
        return features
