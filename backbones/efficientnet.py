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
from backbones._weights import checkpoint_layout

_PAPER = "Tan and Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019"
PADDINGS = ("symmetric", "same")


def resolve_padding(name: str, padding: str | None, pretrained: Pretrained) -> str:
    """The padding to build: the one asked for, else the one the `pretrained` file's weights need.

    TensorFlow's EfficientNets pad "same" (asymmetrically at stride 2) with BatchNorm eps 1e-3; timm ports
    them as `tf_<name>`, and the lukemelas EfficientNet-PyTorch files hold such weights. On a symmetric-
    padding net they would give other activations, so their layout asks for "same" (docs/weights.md).

    Args:
        name: Our registered name.
        padding: "symmetric", "same", or None (choose from the file; symmetric without one).
        pretrained: What the user passed as `pretrained`.

    Returns:
        "symmetric" or "same".

    Raises:
        ValueError: An unknown padding, or one that contradicts the file's layout.
    """
    if padding is not None and padding not in PADDINGS:
        raise ValueError(f"{name} padding {padding!r} is not supported; choose one of {PADDINGS} (or None)")
    layout = checkpoint_layout(pretrained)
    needed = None  # timm's own files do not tell: efficientnet_b0 and tf_efficientnet_b0 share their keys
    if layout is not None and layout.name != "timm" and layout.target == "timm":
        needed = layout.padding or "symmetric"
    if padding is None:
        return needed or "symmetric"
    if needed is not None and needed != padding:
        raise ValueError(
            f"{pretrained} holds {layout.description} weights, trained with {needed!r} padding; {name} with "
            f"padding={padding!r} would not reproduce them. Use padding={needed!r} (or None to follow the file)"
        )
    return padding


def _register(name: str) -> Callable[..., Backbone]:
    """Register one variant; our names are timm's names."""

    def builder(
        *,
        pretrained: Pretrained = False,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        feature_location: str = "stage",
        in_chans: int = 3,
        padding: str | None = None,
    ) -> Backbone:
        padding = resolve_padding(name, padding, pretrained)
        return build_timm_backbone(
            name=name,
            architecture=name if padding == "symmetric" else f"{name} (padding='same')",
            timm_name=name if padding == "symmetric" else f"tf_{name}",
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=out_indices,
            feature_location=feature_location,
            in_chans=in_chans,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{name}; taps at strides 2, 4, 8, 16, 32 (stage: block outputs; expansion: SSDLite-style expansions "
        f"of the blocks that downsample next, then the head conv: 1280 channels, 1408 for B2, 1536 for B3). "
        f"padding='same' builds timm's tf_{name} (TensorFlow's padding and BatchNorm eps, as the TF-ported "
        f"weights need); None (default) follows the pretrained file's layout, else symmetric."
    )
    return register_backbone(name, paper=_PAPER)(builder)


efficientnet_b0 = _register("efficientnet_b0")
efficientnet_b1 = _register("efficientnet_b1")
efficientnet_b2 = _register("efficientnet_b2")
efficientnet_b3 = _register("efficientnet_b3")
efficientnet_lite0 = _register("efficientnet_lite0")
