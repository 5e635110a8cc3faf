"""Convolution blocks the segmentation heads share: conv-BN-ReLU, separable conv, image pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Module:
    """Convolution (no bias, "same" padding) + batch norm + ReLU."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, dilation=dilation, activation_layer=nn.ReLU)


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
            Conv2dNormActivation(
                in_channels, in_channels, 3, dilation=dilation, groups=in_channels, activation_layer=nn.ReLU
            ),
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
