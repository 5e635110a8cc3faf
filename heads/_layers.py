"""Blocks every head shares: conv-norm-activation, separable conv, image pooling, upsampling.

`conv_bn_act` is the one convolution block of the heads (SSDLite, DeepLabv3 family, depth decoders):
torchvision's `Conv2dNormActivation`, an `nn.Sequential` of conv (no bias, "same" padding), norm and
activation, so state-dict keys are `<i>.0.weight`, `<i>.1.running_mean`, ... in every head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
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


# The ONNX export writes a bilinear resize whose smaller source side is at most this as two MatMuls.
MATMUL_RESIZE_MAX_SOURCE = 96


def interpolation_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in) weights of PyTorch's 1-D linear interpolation with `align_corners=False`.

    Row i holds the two taps of output i: `relu(1 - |src_i - j|)` with `src_i = (i + 0.5) * in / out - 0.5`
    clamped to [0, in - 1] (PyTorch clamps below 0 and repeats the last input past in - 1). Built from
    `arange`s so that a traced export computes it from the tensor's shape (dynamic sizes stay dynamic).
    """
    i = torch.arange(size_out, dtype=like.dtype, device=like.device)
    j = torch.arange(size_in, dtype=like.dtype, device=like.device)
    src = torch.minimum(((i + 0.5) * (j.shape[0] / i.shape[0]) - 0.5).clamp(min=0), j[-1])
    return torch.relu(1 - (src[:, None] - j[None]).abs())


def bilinear_as_matmuls(x: Tensor, output_size: Sequence[int]) -> Tensor:
    """`F.interpolate(x, output_size, mode="bilinear", align_corners=False)` as `A_h @ x @ A_w^T`.

    Equal up to float rounding. Why: onnxruntime's CPU `Resize` (linear) is a scalar loop; two MatMuls run
    in its GEMM kernels, 2.6-4x faster for segmentation logits upsampled x16 or x8 to 512 x 512 (2 threads),
    but their cost per output grows with the source side, so past about 100 source pixels `Resize` wins
    (`MATMUL_RESIZE_MAX_SOURCE`). The large pass runs along the smaller source side.
    """
    (h, w), (out_h, out_w) = x.shape[-2:], output_size  # (N, C, h, w) -> (N, C, H, W)
    rows, cols_t = interpolation_matrix(h, out_h, x), interpolation_matrix(w, out_w, x).T  # (H, h), (w, W)
    return rows @ (x @ cols_t) if h <= w else (rows @ x) @ cols_t


def bilinear_resize(x: Tensor, output_size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) of (N, C, h, w) to (N, C, *output_size).

    `F.interpolate` in PyTorch; in an ONNX export, `bilinear_as_matmuls` when the smaller source side is at
    most `MATMUL_RESIZE_MAX_SOURCE` (the choice is made at the export's example size).
    """
    if torch.onnx.is_in_onnx_export() and min(x.shape[-2:]) <= MATMUL_RESIZE_MAX_SOURCE:
        return bilinear_as_matmuls(x, output_size)
    return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)


def resize_to(x: Tensor, output_size: Sequence[int] | None, mode: str = "bilinear") -> Tensor:
    """Resize (N, C, h, w) to `output_size` (H, W); None or the same size returns `x` itself.

    The one upsampling step of the dense heads (see `docs/design.md`, "who upsamples").
    """
    if output_size is None or tuple(x.shape[-2:]) == tuple(output_size):
        return x
    if mode == "bilinear":
        return bilinear_resize(x, output_size)
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
