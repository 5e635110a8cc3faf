"""Blocks every head shares: conv-norm-activation, separable conv, image pooling, upsampling.

`conv_bn_act` is the one convolution block of the heads (SSDLite, DeepLabv3 family, depth decoders):
torchvision's `Conv2dNormActivation`, an `nn.Sequential` of conv (no bias, "same" padding), norm and
activation, so state-dict keys are `<i>.0.weight`, `<i>.1.running_mean`, ... in every head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
    activation: Callable[..., nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Convolution (no bias, padding `dilation * (kernel_size - 1) // 2`) + norm + activation (in place).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel side.
        stride: Convolution stride.
        dilation: Convolution dilation.
        groups: Convolution groups (`in_channels` for depthwise).
        norm: Norm layer factory, called with the channel count (e.g. a BatchNorm2d partial with eps).
        activation: Activation class (nn.ReLU, nn.ReLU6, ...).
    """
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        dilation=dilation,
        groups=groups,
        norm_layer=norm,
        activation_layer=activation,
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """`conv_bn_act` with batch norm and ReLU (the DeepLab heads' block)."""
    return conv_bn_act(in_channels, out_channels, kernel_size, dilation=dilation)


def resize_to(x: Tensor, output_size: Sequence[int] | None, mode: str = "bilinear") -> Tensor:
    """Resize (N, C, h, w) to `output_size` (H, W); None or the same size returns `x` itself.

    The one upsampling step of the dense heads (see `docs/design.md`, "who upsamples").
    """
    if output_size is None or tuple(x.shape[-2:]) == tuple(output_size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(output_size), mode="nearest")
    return F.interpolate(x, size=tuple(output_size), mode=mode, align_corners=False)


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 (dilated) + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    The form DeepLabv3+ uses in its separable ASPP and decoder (Chen et al., ECCV 2018, Sec. 3.2).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dilation: Dilation of the depthwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            conv_bn_act(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            conv_bn_relu(in_channels, out_channels, 1),
        )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv + BN + ReLU, broadcast back.

    Batch norm of a (1, C, 1, 1) tensor has no batch statistics (one value per channel), so with one
    image in a training batch this branch normalizes with its running statistics instead of failing
    ("Expected more than 1 value per channel") as torchvision's ASPPPooling does.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W), constant over H and W."""
        y = self.conv(F.adaptive_avg_pool2d(x, 1))  # (N, C_out, 1, 1)
        if self.training and y.shape[0] == 1:
            bn = self.bn
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            y = self.bn(y)
        # Bilinear upsampling of a 1x1 map is a broadcast; expand avoids the interpolation kernel.
        return self.act(y).expand(-1, -1, x.shape[-2], x.shape[-1])
