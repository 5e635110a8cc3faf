"""DeepLabv3 family segmentation heads, sized from a backbone's FeatureInfo.

- ASPP and the DeepLabv3 head: Chen et al., "Rethinking Atrous Convolution for Semantic Image
  Segmentation", arXiv 2017. https://arxiv.org/abs/1706.05587
- The mobile head (image pooling + 1x1 branch only): Sandler et al., "MobileNetV2: Inverted Residuals
  and Linear Bottlenecks", CVPR 2018, Sec. 6.3. https://arxiv.org/abs/1801.04381
- The DeepLabv3+ decoder and separable ASPP: Chen et al., "Encoder-Decoder with Atrous Separable
  Convolution for Semantic Image Segmentation", ECCV 2018. https://arxiv.org/abs/1802.02611
- LR-ASPP: Howard et al., "Searching for MobileNetV3", ICCV 2019, Sec. 6.3. https://arxiv.org/abs/1905.02244

Every head takes the backbone's full list of feature maps and picks the ones it needs by stride.
`head(features)` returns logits at the head's own stride (`head.output_stride`); `head(features,
output_size=(H, W))` upsamples them bilinearly to the input size, as the tasks call it (the heads
upsample, never the task: docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from backbones import FeatureInfo
from heads._layers import ImagePooling, SeparableConvBNReLU, bilinear_resize, conv_bn_relu, resize_to

# ASPP rates of the DeepLabv3 paper at output stride 16; they scale with 16 / output stride.
BASE_RATES = (6, 12, 18)


def rates_for_stride(output_stride: int, base_rates: Sequence[int] = BASE_RATES) -> tuple[int, ...]:
    """ASPP dilation rates that follow the output stride: (6, 12, 18) at 16, (12, 24, 36) at 8, (3, 6, 9) at 32.

    Args:
        output_stride: Stride of the map ASPP runs on.
        base_rates: The rates at output stride 16.

    Returns:
        The rates, at least 1 each.
    """
    return tuple(max(1, r * 16 // output_stride) for r in base_rates)


def _find_stride(feature_info: FeatureInfo, stride: int, head: str) -> int:
    # The first map at a stride is the stage output at that resolution; at output stride 8 the deeper,
    # dilated stages share stride 8 with it, and the shallow one is the one the paper means.
    try:
        return feature_info.index_of_stride(stride, last=False)
    except ValueError as err:
        raise ValueError(
            f"{head} needs a feature map at stride {stride}, but the backbone returns strides "
            f"{feature_info.strides}; keep that level in out_indices"
        ) from err


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: 1x1 branch, one 3x3 branch per rate, image pooling; concat, project.

    Args:
        in_channels: Channels of the input map.
        out_channels: Channels of every branch and of the projection.
        rates: Dilation rates of the 3x3 branches; empty for the MobileNetV2 paper's mobile ASPP.
        separable: Depthwise-separable 3x3 branches (DeepLabv3+).
        image_pooling: Include the image-level branch.
        dropout: Dropout after the projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = BASE_RATES,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        # Branch order (1x1, rates, pooling) is torchvision's, so its weights map onto ours in order.
        branches: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, 1)]
        for rate in rates:
            if separable:
                branches.append(SeparableConvBNReLU(in_channels, out_channels, dilation=rate))
            else:
                branches.append(conv_bn_relu(in_channels, out_channels, 3, dilation=rate))
        if image_pooling:
            branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))
        self.rates = tuple(rates)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, out_channels, H, W)."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))  # (N, B * C, H, W) -> (N, C, H, W)


class DeepLabV3Head(nn.Module):
    """DeepLabv3: ASPP on the deepest map, then a 1x1 classifier.

    With `rates=()` this is the MobileNetV2 paper's mobile DeepLabv3 head (image pooling + 1x1 only:
    2.11M parameters with MobileNetV2 at 21 classes). With `rates=(12, 24, 36), dropout=0.5,
    extra_conv=True` it is torchvision's `DeepLabHead`.

    Args:
        feature_info: What the backbone returns.
        num_classes: Output classes.
        channels: ASPP channels.
        rates: 3x3 branch rates; None follows the deepest map's stride (6, 12, 18 at 16).
        separable: Depthwise-separable 3x3 branches.
        image_pooling: Include ASPP's image-level branch.
        dropout: Dropout before the classifier.
        extra_conv: A 3x3 conv + BN + ReLU between ASPP and the classifier (torchvision's head).
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
        extra_conv: bool = False,
    ) -> None:
        super().__init__()
        self.output_stride = feature_info.strides[-1]
        rates = rates_for_stride(self.output_stride) if rates is None else tuple(rates)
        self.aspp = ASPP(feature_info.channels[-1], channels, rates, separable, image_pooling, dropout)
        self.conv = conv_bn_relu(channels, channels, 3) if extra_conv else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Backbone maps -> (N, num_classes, H / output_stride, W / output_stride) logits, or at `output_size`."""
        return resize_to(self.classifier(self.conv(self.aspp(features[-1]))), output_size)


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+: ASPP on the deepest map, refined with stride-4 low-level features.

    Decoder (paper Sec. 3.1): 1x1 conv reduces the low-level map to 48 channels, the ASPP output is
    upsampled bilinearly to it, concatenated, and two 3x3 convs (256) precede the classifier.

    Args:
        feature_info: What the backbone returns.
        num_classes: Output classes.
        channels: ASPP and decoder channels.
        rates: ASPP rates; None follows the deepest map's stride.
        separable: Depthwise-separable ASPP and decoder convs (the paper's choice for speed).
        low_level_stride: Stride of the low-level map.
        low_level_channels: Channels the low-level map is reduced to.
        dropout: Dropout after the ASPP projection.
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = True,
        low_level_stride: int = 4,
        low_level_channels: int = 48,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.low_index = _find_stride(feature_info, low_level_stride, "DeepLabv3+")
        self.output_stride = low_level_stride
        deep_stride = feature_info.strides[-1]
        rates = rates_for_stride(deep_stride) if rates is None else tuple(rates)
        self.aspp = ASPP(feature_info.channels[-1], channels, rates, separable, True, dropout)
        self.reduce = conv_bn_relu(feature_info.channels[self.low_index], low_level_channels, 1)

        def conv3x3(cin: int, cout: int) -> nn.Module:
            return SeparableConvBNReLU(cin, cout) if separable else conv_bn_relu(cin, cout, 3)

        self.decoder = nn.Sequential(conv3x3(channels + low_level_channels, channels), conv3x3(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Backbone maps -> (N, num_classes, H / low_level_stride, W / low_level_stride) logits, or at `output_size`."""
        low = self.reduce(features[self.low_index])  # (N, 48, H/4, W/4)
        x = self.aspp(features[-1])  # (N, 256, H/16, W/16)
        x = bilinear_resize(x, low.shape[-2:])
        return resize_to(self.classifier(self.decoder(torch.cat([x, low], dim=1))), output_size)  # (N, K, H/4, W/4)


class LRASPPHead(nn.Module):
    """Lite Reduced ASPP (MobileNetV3 paper, Fig. 10), in torchvision's form.

    The deepest map goes through a 1x1 conv + BN + ReLU gated by a squeeze-excitation-like global
    branch (pool, 1x1, sigmoid); it is upsampled to the stride-8 map and both get 1x1 classifiers
    whose logits are added. As in torchvision the gate pools globally rather than with the paper's
    49x49 window, and the stride-8 map is the backbone's stage output there (40 channels on
    MobileNetV3-Large); the deepest map is the 960-channel conv at output stride 16.

    Args:
        feature_info: What the backbone returns.
        num_classes: Output classes.
        inter_channels: Channels of the high-resolution branch (128 in the paper).
        low_level_stride: Stride of the low-level map.
    """

    def __init__(
        self, feature_info: FeatureInfo, num_classes: int, *, inter_channels: int = 128, low_level_stride: int = 8
    ) -> None:
        super().__init__()
        self.low_index = _find_stride(feature_info, low_level_stride, "LR-ASPP")
        self.output_stride = low_level_stride
        high_channels, low_channels = feature_info.channels[-1], feature_info.channels[self.low_index]
        self.cbr = conv_bn_relu(high_channels, inter_channels, 1)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Backbone maps -> (N, num_classes, H / 8, W / 8) logits, or at `output_size`."""
        low, high = features[self.low_index], features[-1]
        x = self.cbr(high) * self.scale(high)  # (N, 128, H/16, W/16) * (N, 128, 1, 1)
        x = bilinear_resize(x, low.shape[-2:])
        return resize_to(self.low_classifier(low) + self.high_classifier(x), output_size)  # (N, K, H/8, W/8)


class FCNAuxHead(FCNHead):
    """The auxiliary FCN head of torchvision's segmentation models on the first map at `stride`.

    3x3 conv + BN + ReLU, dropout, 1x1 classifier (torchvision's `FCNHead`, whose layers and weights
    it keeps), reading the map by stride like the other heads; an extra training loss only.

    Args:
        feature_info: What the backbone returns.
        num_classes: Output classes.
        stride: Stride of the map it reads (torchvision: the stride-8 or stride-16 stage).
    """

    def __init__(self, feature_info: FeatureInfo, num_classes: int, *, stride: int = 8) -> None:
        index = _find_stride(feature_info, stride, "the auxiliary FCN head")
        super().__init__(feature_info.channels[index], num_classes)
        self.index, self.output_stride = index, stride

    def forward(self, features: Sequence[Tensor], output_size: Sequence[int] | None = None) -> Tensor:
        """Backbone maps -> (N, num_classes, H / stride, W / stride) logits, or at `output_size`."""
        return resize_to(super().forward(features[self.index]), output_size)


def _mobile_deeplabv3(feature_info: FeatureInfo, num_classes: int, **kwargs) -> DeepLabV3Head:
    kwargs.setdefault("rates", ())
    return DeepLabV3Head(feature_info, num_classes, **kwargs)


SEGMENTATION_HEADS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3": DeepLabV3Head,
    "deeplabv3_mobile": _mobile_deeplabv3,
    "deeplabv3plus": DeepLabV3PlusHead,
    "lraspp": LRASPPHead,
}


def create_segmentation_head(name: str, feature_info: FeatureInfo, num_classes: int, **kwargs) -> nn.Module:
    """Build a segmentation head by name.

    Args:
        name: One of `SEGMENTATION_HEADS`: "deeplabv3" (full ASPP), "deeplabv3_mobile" (MobileNetV2
            paper), "deeplabv3plus" (stride-4 decoder), "lraspp" (MobileNetV3 paper).
        feature_info: What the backbone returns.
        num_classes: Output classes.
        **kwargs: The head's options (see its class).

    Returns:
        The head; `head(features)` gives logits at `head.output_stride`, `head(features, output_size)`
        at the input size.

    Raises:
        ValueError: Unknown head name.
    """
    if name not in SEGMENTATION_HEADS:
        raise ValueError(f"unknown segmentation head '{name}'; choose one of {', '.join(SEGMENTATION_HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return SEGMENTATION_HEADS[name](feature_info, num_classes, **kwargs)
