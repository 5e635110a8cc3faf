"""Building blocks of SkipblockNet, laid out like the reference so its checkpoint keys match.

Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021 (https://arxiv.org/abs/2107.11170);
reference code: https://github.com/lusinlu/bias-loss-skipblocknet (`skipnet.py`). The blocks are
MobileNetV3-style inverted residuals (Howard et al., "Searching for MobileNetV3", ICCV 2019). Module
indices inside each `nn.Sequential` follow the reference exactly, because they are the state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% down (TF-slim's rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class HardSwish(nn.Module):
    """x * relu6(x + 3) / 6, computed as the reference does.

    `nn.Hardswish` differs from the reference's `x * h_sigmoid(x)` by one ulp on some inputs; this
    form keeps our outputs bit-identical to the reference's (`F.hardsigmoid` is exactly relu6(x+3)/6).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise; any shape."""
        return x * F.hardsigmoid(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (Hu et al., CVPR 2018; MobileNetV3 variant).

    Args:
        channels: Channels of the gated tensor.
        reduction: Squeeze ratio of the bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        squeezed = make_divisible(channels // reduction, 8)
        # Linear layers (not 1x1 convs) at fc.0 / fc.2: the reference's key layout.
        self.fc = nn.Sequential(
            nn.Linear(channels, squeezed), nn.ReLU(inplace=True), nn.Linear(squeezed, channels), nn.Hardsigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), each channel scaled by a gate from the global average."""
        n, c = x.shape[:2]
        # adaptive pooling, not mean(): the reference's op, so the sums round the same way.
        gate = self.fc(F.adaptive_avg_pool2d(x, 1).view(n, c)).view(n, c, 1, 1)  # (N, C, 1, 1)
        return x * gate


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> hard swish, the reference's stem and last 1x1 layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        HardSwish(),
    )


def _act(hard_swish: bool) -> nn.Module:
    return HardSwish() if hard_swish else nn.ReLU(inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: 1x1 expand -> depthwise kxk (strided) -> [SE] -> 1x1 project (+ identity).

    `conv` indices (the checkpoint keys): 0-2 expansion conv/BN/act, 3-5 depthwise conv/BN/act,
    6 SE or Identity, 7-8 projection conv/BN.

    Args:
        in_channels: Input channels.
        hidden_channels: Expanded channels.
        out_channels: Output channels.
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride (1 or 2).
        use_se: Squeeze-and-excite after the depthwise conv.
        use_hs: Hard swish instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        use_se: bool,
        use_hs: bool,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        self.identity = stride == 1 and in_channels == out_channels
        pad = (kernel_size - 1) // 2
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden_channels),
            _act(use_hs),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size, stride, pad, groups=hidden_channels, bias=False),
            nn.BatchNorm2d(hidden_channels),
            _act(use_hs),
            SqueezeExcite(hidden_channels) if use_se else nn.Identity(),
            nn.Conv2d(hidden_channels, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    @property
    def hidden_channels(self) -> int:
        """Channels of the expansion output."""
        return self.conv[0].out_channels

    def expand(self, x: Tensor) -> Tensor:
        """The expansion output, (N, C_in, H, W) -> (N, hidden, H, W): the SSDLite tap point."""
        for layer in self.conv[:3]:
            x = layer(x)
        return x

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C_in, H, W) -> (expansion (N, hidden, H, W), output (N, C_out, H / stride, W / stride))."""
        hidden = self.expand(x)
        out = hidden
        for layer in self.conv[3:]:
            out = layer(out)
        return hidden, x + out if self.identity else out

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        return self.forward_with_expansion(x)[1]


def adaptive_avg_pool2d_by_sums(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.adaptive_avg_pool2d(x, size)` from cumulative sums, for ONNX export with a dynamic output size.

    The TorchScript ONNX exporter refuses adaptive pooling whose output size is not a constant, and here it is
    the size of another map, which follows the input. Output i of a dimension of length L pooled to n averages
    rows [floor(i * L / n), ceil((i + 1) * L / n)), PyTorch's rule, so any L / n gives PyTorch's windows; the
    sums are differences of a cumulative sum (float rounding apart, the same values).

    Args:
        x: (N, C, H, W).
        size: (h, w) output size (ints, or traced sizes).

    Returns:
        (N, C, h, w).
    """
    for dim, n in ((2, size[0]), (3, size[1])):
        length = x.shape[dim]
        i = torch.arange(n, device=x.device)
        start = torch.div(i * length, n, rounding_mode="floor")
        end = torch.div((i + 1) * length + n - 1, n, rounding_mode="floor")
        zero = torch.zeros_like(x.narrow(dim, 0, 1))
        sums = torch.cat([zero, x.cumsum(dim)], dim)  # sums[k] = x[0] + ... + x[k - 1] along `dim`
        shape = [1, 1, 1, 1]
        shape[dim] = -1
        count = (end - start).to(x.dtype).view(shape)
        x = (sums.index_select(dim, end) - sums.index_select(dim, start)) / count
    return x


class SkipBlock(nn.Module):
    """SkipblockNet's skip block: average-pool an early map to a deeper map's size, then a bottleneck.

    The reference pools to a fixed size (28 or 14, right only for 224x224 input); here the caller
    passes the size of the map the result is added to, which equals the reference's at 224x224 and
    follows the input (and dilation) everywhere else. `core_block` indices are the reference's keys.

    Args:
        in_channels: Channels of the early map.
        hidden_channels: Expanded channels.
        out_channels: Channels of the map it is added to.
        kernel_size: Depthwise kernel size.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.identity = in_channels == out_channels
        pad = (kernel_size - 1) // 2
        self.core_block = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size, 1, pad, groups=hidden_channels, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, *size)."""
        if torch.onnx.is_in_onnx_export():
            x = adaptive_avg_pool2d_by_sums(x, size)  # (N, C_in, h, w), the same values, exportable
        else:
            x = F.adaptive_avg_pool2d(x, size)  # (N, C_in, h, w)
        out = self.core_block(x)
        return x + out if self.identity else out
