"""ResNet-18, -34 and -50, wrapping timm.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. https://arxiv.org/abs/1512.03385

timm's `resnet18` / `resnet34` / `resnet50` are the paper's networks as torchvision builds them (ResNet-50
"v1.5": the bottleneck's stride on its 3x3 conv), with torchvision's module and state-dict names (`conv1`,
`bn1`, `layer1.0.conv1`, ..., `fc`), so a torchvision checkpoint loads unchanged (docs/weights.md). timm
dilates layer3 / layer4 for output stride 16 / 8 the way torchvision's `replace_stride_with_dilation` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backbones._base import Backbone, reject_expansion
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import TimmBackbone, hub_weights_exist

_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
# Stage channels (stride 2 stem, then layer1-4): basic blocks keep the width, bottlenecks widen it 4x.
_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}


def _register(name: str) -> Callable[..., Backbone]:
    """Register one depth; our names are timm's (and torchvision's)."""

    def builder(
        *,
        pretrained: Pretrained = False,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        feature_location: str = "stage",
        in_chans: int = 3,
    ) -> Backbone:
        reject_expansion(
            name,
            feature_location,
            missing="expansion layers",
            why="its residual blocks are plain 3x3 convs or 1x1-3x3-1x1 bottlenecks that narrow, then restore, "
            "the width; no 1x1 conv expands the features before a depthwise conv",
        )
        return TimmBackbone(
            name=name,
            architecture=name,
            timm_name=name,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=out_indices,
            in_chans=in_chans,
            pretrained_available=hub_weights_exist(name),
            stem_keys=("conv1.weight",),
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{name}; stage taps at strides 2, 4, 8, 16, 32 with {_CHANNELS[name]} channels: the stem's ReLU "
        f"(before the max pool), then layer1-layer4. No expansion taps (feature_location='expansion' is refused). "
        f"pretrained=True loads timm's default ImageNet weights; a torchvision or timm file loads as it is."
    )
    return register_backbone(name, paper=_PAPER)(builder)


resnet18 = _register("resnet18")
resnet34 = _register("resnet34")
resnet50 = _register("resnet50")
