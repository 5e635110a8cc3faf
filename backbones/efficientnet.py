"""EfficientNet B0-B3 and EfficientNet-Lite0, wrapping timm.

Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019.
https://arxiv.org/abs/1905.11946. Lite: the TensorFlow EfficientNet-Lite models (no squeeze-excitation,
ReLU6, fixed stem and head), https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone

_PAPER = "Tan and Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019"


def _register(name: str) -> Callable[..., Backbone]:
    """Register one variant; our names are timm's names."""

    def builder(
        *,
        pretrained: Pretrained = False,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        feature_location: str = "stage",
        in_chans: int = 3,
    ) -> Backbone:
        return build_timm_backbone(
            name=name,
            architecture=name,
            timm_name=name,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=out_indices,
            feature_location=feature_location,
            in_chans=in_chans,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{name}; taps at strides 2, 4, 8, 16, 32 (stage: block outputs; expansion: SSDLite-style expansions "
        f"of the blocks that downsample next, then the head conv: 1280 channels, 1408 for B2, 1536 for B3)."
    )
    return register_backbone(name, paper=_PAPER)(builder)


efficientnet_b0 = _register("efficientnet_b0")
efficientnet_b1 = _register("efficientnet_b1")
efficientnet_b2 = _register("efficientnet_b2")
efficientnet_b3 = _register("efficientnet_b3")
efficientnet_lite0 = _register("efficientnet_lite0")
