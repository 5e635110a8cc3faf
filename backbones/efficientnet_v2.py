"""EfficientNetV2-B0 ... B3 and EfficientNetV2-S, wrapping timm.

Tan and Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021. https://arxiv.org/abs/2104.00298
Reference implementation: https://github.com/google/automl/tree/master/efficientnetv2

timm builds both sizes from the reference implementation's block definitions: FusedMBConv stages (timm's
`EdgeResidual`: a strided 3x3 conv that expands, then a 1x1 projection) at strides 2-8, MBConv stages
(`InvertedResidual` with squeeze-excitation) after. The two timm spellings differ only in conventions:

- `tf_efficientnetv2_<size>`: TensorFlow's "same" padding (asymmetric at stride 2) and BatchNorm eps 1e-3,
  what the official (TF-trained) checkpoints need; timm's hub weights of these nets are those checkpoints;
- `efficientnetv2_s` (timm registers no symmetric B0-B3; `tf_efficientnetv2_b<i>` with `pad_type=""` and
  eps 1e-5 is that net): PyTorch's symmetric padding, torchvision's `efficientnet_v2_s` (whose files also
  need BatchNorm eps 1e-3, which their layout sets).

The family option `padding` chooses ("same" or "symmetric"); None (the default) follows the weights: a
file's layout (torchvision's V2-S: symmetric), `pretrained=True` ("same": the hub has only the TF
checkpoints), and otherwise the size's usual net ("same" for B0-B3, whose only definition and weights are
TensorFlow's; symmetric for S, torchvision's and timm's own definition).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import timm

from backbones._base import Backbone
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import build_timm_backbone
from backbones._weights import apply_layout_bn_eps
from backbones.efficientnet import PADDINGS, resolve_padding

_PAPER = "Tan and Le, EfficientNetV2: Smaller Models and Faster Training, ICML 2021"
# Our name -> (timm's TF-padded variant, timm's symmetric one or None when timm registers none).
_TIMM_NAMES = {
    "efficientnet_v2_b0": ("tf_efficientnetv2_b0", None),
    "efficientnet_v2_b1": ("tf_efficientnetv2_b1", None),
    "efficientnet_v2_b2": ("tf_efficientnetv2_b2", None),
    "efficientnet_v2_b3": ("tf_efficientnetv2_b3", None),
    "efficientnet_v2_s": ("tf_efficientnetv2_s", "efficientnetv2_s"),
}
# PyTorch's BatchNorm eps (timm's default), for the symmetric B0-B3 built from the tf_ definition.
_TORCH_BN_EPS = 1e-5


def _default_padding(name: str, padding: str | None, pretrained: Pretrained) -> str:
    """The padding to build, see the module docstring (a file's layout is checked by `resolve_padding`)."""
    if padding is None and pretrained is True:
        return "same"  # timm's hub holds the official TF checkpoints only
    from backbones._weights import checkpoint_layout

    layout = checkpoint_layout(pretrained)
    if padding is None and (layout is None or layout.name == "timm") and not name.endswith("_s"):
        return "same"  # B0-B3: TensorFlow's nets; a timm file of them does not say, and tf_ is all timm has
    return resolve_padding(name, padding, pretrained)


def _register(name: str) -> Callable[..., Backbone]:
    """Register one size."""
    tf_name, symmetric_name = _TIMM_NAMES[name]

    def builder(
        *,
        pretrained: Pretrained = False,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        feature_location: str = "stage",
        in_chans: int = 3,
        padding: str | None = None,
    ) -> Backbone:
        if padding is not None and padding not in PADDINGS:
            raise ValueError(f"{name} padding {padding!r} is not supported; choose one of {PADDINGS} (or None)")
        padding = _default_padding(name, padding, pretrained)
        create_fn = None
        if padding == "same":
            timm_name = tf_name
        elif symmetric_name is not None:
            timm_name = symmetric_name
        else:  # the tf_ definition with PyTorch's padding and eps; no published weights
            timm_name = tf_name
            if pretrained is True:
                raise ValueError(
                    f"no ImageNet weights are published for {name} (padding='symmetric'): timm's hub has the "
                    f"official TensorFlow weights, for padding='same' (or None); or pass a local file as "
                    f"pretrained='/path/to/weights.pth'"
                )
            create_fn = partial(timm.create_model, tf_name, pad_type="", bn_eps=_TORCH_BN_EPS)
        backbone = build_timm_backbone(
            name=name,
            architecture=f"{name} (padding='{padding}')",
            timm_name=timm_name,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=out_indices,
            feature_location=feature_location,
            in_chans=in_chans,
            create_fn=create_fn,
            mobilenetv3=False,
        )
        return apply_layout_bn_eps(backbone, pretrained)  # torchvision's V2-S files: BatchNorm eps 1e-3

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{name}; taps at strides 2, 4, 8, 16, 32 (stage: block outputs; expansion: at strides 2 and 4 the "
        f"input of the FusedMBConv block that downsamples next, which has no expansion at that stride; at 8 "
        f"and 16 the MBConv expansion of the block that downsamples next; then the 1280-channel head conv, "
        f"1408 for B2, 1536 for B3). padding='same' builds timm's {tf_name} (TensorFlow's padding and "
        f"BatchNorm eps, as the official weights need), 'symmetric' PyTorch's padding; None follows the weights."
    )
    return register_backbone(name, paper=_PAPER)(builder)


efficientnet_v2_b0 = _register("efficientnet_v2_b0")
efficientnet_v2_b1 = _register("efficientnet_v2_b1")
efficientnet_v2_b2 = _register("efficientnet_v2_b2")
efficientnet_v2_b3 = _register("efficientnet_v2_b3")
efficientnet_v2_s = _register("efficientnet_v2_s")
