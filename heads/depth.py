"""Monocular depth decoders sized from a backbone's FeatureInfo.

- `NNConv5Decoder`: FastDepth's decoder. Wofk, Ma, Yang, Karaman, Sze, "FastDepth: Fast Monocular
  Depth Estimation on Embedded Systems", ICRA 2019. https://arxiv.org/abs/1903.03273
- `FusionDecoder`: a lighter version of MiDaS's multi-scale fusion decoder (RefineNet-style top-down
  fusion with residual conv units). Ranftl, Lasinger, Hafner, Schindler, Koltun, "Towards Robust
  Monocular Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer", TPAMI 2020.
  https://arxiv.org/abs/1907.01341 ; Lin et al., "RefineNet", CVPR 2017.

Both return a positive (N, 1, H, W) map: metric depth bounded by `max_depth` (`output="metric"`) or
relative inverse depth (`output="inverse"`, for the scale-and-shift-invariant loss). As every dense head,
`decoder(features)` returns its map at `decoder.output_stride` and `decoder(features, output_size)` at the
input size, upsampling inside the decoder (docs/design.md, "who upsamples").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import FeatureInfo
from heads._layers import bilinear_resize, conv_bn_act, resize_to

OUTPUTS = ("metric", "inverse")


def _separable(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    """Depthwise k x k then pointwise 1x1, each with BN and ReLU (FastDepth's decoder layer)."""
    return nn.Sequential(conv_bn_act(in_ch, in_ch, kernel_size, groups=in_ch), conv_bn_act(in_ch, out_ch, 1))


class DepthOutput(nn.Module):
    """Map a raw 1-channel map to a positive depth or inverse depth.

    Args:
        output: "metric" for depth in (0, max_depth) via a scaled sigmoid (as GLPDepth and NeWCRFs
            bound their output), "inverse" for a relative inverse depth via softplus (positive, with
            a gradient everywhere, unlike MiDaS's final ReLU).
        max_depth: Upper bound of metric depth, in metres.
    """

    def __init__(self, output: str = "metric", max_depth: float = 10.0) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown depth output '{output}'; choose one of {OUTPUTS}")
        if not max_depth > 0:
            raise ValueError(f"max_depth must be positive, got {max_depth}")
        self.output, self.max_depth = output, float(max_depth)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) raw -> (N, 1, H, W) positive."""
        if self.output == "metric":
            return self.max_depth * torch.sigmoid(x)
        return F.softplus(x)


def _check_stride(feature_info: FeatureInfo, head: str) -> int:
    deepest = feature_info.strides[-1]
    if deepest < 1 or deepest & (deepest - 1):
        raise ValueError(f"{head} needs a power-of-two deepest stride, got strides {feature_info.strides}")
    return deepest


class NNConv5Decoder(nn.Module):
    """FastDepth's NNConv5 decoder with additive skips.

    From the deepest map, five (log2 of its stride) stages of depthwise 5x5 + pointwise 1x1 followed
    by nearest 2x upsampling; after the upsampling to strides 8, 4 and 2 the encoder map of that
    stride is added (FastDepth's additive skips; a 1x1 projection is inserted only when its channels
    differ from the decoder's, so MobileNetV1 gets the paper's parameter-free skips). A final
    pointwise conv gives one channel (run before the last upsampling, which gives the same map at a quarter
    of the cost, see `forward`). For MobileNetV1 (1024 channels at stride 32) the channels are
    1024 -> 512 -> 256 -> 128 -> 64 -> 32 -> 1, as in the paper.

    Args:
        feature_info: What the backbone returns.
        decoder_channels: Output channels of each stage, deep to shallow; None for FastDepth's
            halving ending at 32 (512, 256, 128, 64, 32 for five stages).
        kernel_size: Depthwise kernel (FastDepth: 5).
        skip_strides: Strides whose encoder maps are added (FastDepth: 2, 4, 8); () for no skips.
        output: "metric" or "inverse", see `DepthOutput`.
        max_depth: Bound of metric depth, metres.
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        *,
        decoder_channels: Sequence[int] | None = None,
        kernel_size: int = 5,
        skip_strides: Sequence[int] = (2, 4, 8),
        output: str = "metric",
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        deepest = _check_stride(feature_info, "NNConv5Decoder")
        num_stages = int(math.log2(deepest))
        if num_stages < 1:
            raise ValueError(f"NNConv5Decoder needs a deepest stride > 1, got strides {feature_info.strides}")
        if decoder_channels is None:
            decoder_channels = [32 * 2**i for i in reversed(range(num_stages))]
        if len(decoder_channels) != num_stages:
            raise ValueError(
                f"decoder_channels {tuple(decoder_channels)} must have one entry per 2x upsampling: the deepest "
                f"stride {deepest} needs {num_stages}"
            )
        self.feature_info = feature_info
        channels = [feature_info.channels[-1], *decoder_channels]
        self.stages = nn.ModuleList(_separable(channels[i], channels[i + 1], kernel_size) for i in range(num_stages))
        # Decoder stage i ends at stride deepest / 2**(i+1); map each skip stride to its encoder level.
        self.skip_levels: dict[str, int] = {}
        self.skip_proj = nn.ModuleDict()
        for i in range(num_stages):
            stride = deepest // 2 ** (i + 1)
            if stride not in skip_strides or stride not in feature_info.strides:
                continue
            level = feature_info.index_of_stride(stride)
            self.skip_levels[str(i)] = level
            enc_ch, dec_ch = feature_info.channels[level], decoder_channels[i]
            self.skip_proj[str(i)] = nn.Identity() if enc_ch == dec_ch else conv_bn_act(enc_ch, dec_ch, 1)
        self.final = nn.Conv2d(decoder_channels[-1], 1, 1)
        self.depth = DepthOutput(output, max_depth)
        self.output_stride = 1

    def forward(self, features: list[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Decode depth.

        Args:
            features: The backbone's maps, one per `feature_info` entry.
            output_size: (H, W) of the input image; None for 2**stages times the deepest map's size.

        Returns:
            (N, 1, H, W) positive depth (or inverse depth).
        """
        x = features[-1]  # (N, C_deep, H/32, W/32)
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (N, C_i, h, w)
            key = str(i)
            if key in self.skip_levels:
                skip = features[self.skip_levels[key]]
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")  # ceil-sized, like the encoder's map
                x = x + self.skip_proj[key](skip)
            elif i != last:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if str(last) in self.skip_levels:
            return self.depth(self.final(x))  # (N, 1, H, W)
        # The last upsampling (no skip to add) comes after the final 1x1 conv and the output activation: both
        # act on each pixel alone, so with nearest-neighbour upsampling the result is the same, but they run on
        # a quarter of the pixels and the upsampling moves 1 channel instead of C_last (FastDepth's order
        # upsamples 32 channels at full size; onnxruntime's int8 graph ran that upsampling in a slow NHWC path).
        x = self.depth(self.final(x))  # (N, 1, H/2, W/2)
        if output_size is not None:
            return F.interpolate(x, size=tuple(output_size), mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (N, 1, H, W)


class _ResidualConvUnit(nn.Module):
    """MiDaS's residual conv unit with depthwise-separable 3x3 convolutions (for CPU cost)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FusionDecoder(nn.Module):
    """Multi-scale top-down fusion decoder (a light MiDaS / RefineNet decoder).

    Every level (the deepest of each stride) is projected to `channels` by 1x1 conv + BN; from the
    deepest, the running map is upsampled bilinearly to the next shallower level, fused as MiDaS does
    (`rcu2(x + rcu1(lateral))`), and a small head predicts depth at the shallowest level's stride
    (`output_stride`), its raw map upsampled bilinearly to `output_size` before the output activation.

    Args:
        feature_info: What the backbone returns.
        channels: Width of the fused maps.
        head_channels: Width of the prediction head's hidden layer.
        output: "metric" or "inverse", see `DepthOutput`.
        max_depth: Bound of metric depth, metres.
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        *,
        channels: int = 64,
        head_channels: int = 32,
        output: str = "metric",
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        self.feature_info = feature_info
        # With dilation several maps share a stride; the deepest of them carries the most context.
        self.levels = sorted({feature_info.index_of_stride(s) for s in feature_info.strides})
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(feature_info.channels[i], channels, 1, bias=False), nn.BatchNorm2d(channels))
            for i in self.levels
        )
        self.rcu_skip = nn.ModuleList(_ResidualConvUnit(channels) for _ in self.levels)
        self.rcu_out = nn.ModuleList(_ResidualConvUnit(channels) for _ in self.levels)
        self.head = nn.Sequential(conv_bn_act(channels, head_channels, 3), nn.Conv2d(head_channels, 1, 1))
        self.depth = DepthOutput(output, max_depth)
        self.output_stride = feature_info.strides[self.levels[0]]

    def forward(self, features: list[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Decode depth.

        Args:
            features: The backbone's maps, one per `feature_info` entry.
            output_size: (H, W) of the input image; None for the map at `output_stride`.

        Returns:
            (N, 1, H, W) positive depth (or inverse depth), or (N, 1, H / output_stride, W / output_stride).
        """
        x = None
        for j in reversed(range(len(self.levels))):
            lateral = self.rcu_skip[j](self.lateral[j](features[self.levels[j]]))  # (N, C, h_j, w_j)
            if x is None:
                x = lateral
            else:
                x = bilinear_resize(x, lateral.shape[-2:]) + lateral
            x = self.rcu_out[j](x)
        raw = self.head(x)  # (N, 1, H/s, W/s)
        return self.depth(resize_to(raw, output_size))  # (N, 1, H, W) with output_size


DEPTH_HEADS: dict[str, type[nn.Module]] = {"nnconv5": NNConv5Decoder, "fusion": FusionDecoder}


def create_depth_head(name: str, feature_info: FeatureInfo, **kwargs) -> nn.Module:
    """Build a depth decoder by name ("nnconv5" or "fusion").

    Args:
        name: Decoder name.
        feature_info: What the backbone returns.
        **kwargs: The decoder's keyword arguments.

    Returns:
        The decoder; `decoder(features, output_size)` gives (N, 1, H, W), `decoder(features)` the map at
        `decoder.output_stride`.
    """
    if name not in DEPTH_HEADS:
        raise ValueError(f"unknown depth head '{name}'; choose one of {sorted(DEPTH_HEADS)}")
    return DEPTH_HEADS[name](feature_info, **kwargs)
