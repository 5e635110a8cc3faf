"""ShuffleNetV2, our own dense-capable implementation, weight-compatible with torchvision's.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018.
https://arxiv.org/abs/1807.11164

torchvision's `ShuffleNetV2` cannot dilate, so the architecture is rebuilt here with the same module
names (`conv1`, `maxpool`, `stage2`-`stage4` of `branch1`/`branch2` units, `conv5`); its ImageNet
weights and files in its layout load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backbones._base import Backbone, reject_expansion
from backbones._registry import Pretrained, register_backbone
from backbones._shuffle_blocks import LevelBackbone, ShuffleV2Block, stage_dilations
from backbones._weights import download_error, load_checked, read_state_dict

# width_mult -> (stem, stage2, stage3, stage4, conv5) channels, as torchvision (and the paper's Table 5).
CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)
# width_mult -> torchvision weights enum; every width has ImageNet weights there.
TORCHVISION_WEIGHTS = {
    0.5: "ShuffleNet_V2_X0_5_Weights",
    1.0: "ShuffleNet_V2_X1_0_Weights",
    1.5: "ShuffleNet_V2_X1_5_Weights",
    2.0: "ShuffleNet_V2_X2_0_Weights",
}
_STAGES = ("stage2", "stage3", "stage4")


class ShuffleNetV2(LevelBackbone):
    """ShuffleNetV2 as a 5-level feature extractor (strides 2, 4, 8, 16, 32).

    Taps: `conv1` (stride 2), the max-pool (4), stage 2 (8), stage 3 (16) and stage 4 followed by
    `conv5` (32), since `conv5` belongs to the pretrained body. Deeper strides than `output_stride`
    become dilation: a stage's first unit keeps stride 1 and the previous dilation, the later units
    the multiplied dilation.

    Args:
        width_mult: Channel multiplier (0.5, 1.0, 1.5, 2.0).
        output_stride: 8, 16 or 32.
        out_indices: Levels to return, None for all five.
        in_chans: Input channels.
    """

    stage2: nn.Sequential | None
    stage3: nn.Sequential | None
    stage4: nn.Sequential | None
    conv5: nn.Sequential | None

    def __init__(self, *, width_mult: float, output_stride: int, out_indices: Sequence[int] | None, in_chans: int):
        super().__init__()
        self.name, self.in_chans, self.output_stride = "shufflenet_v2", in_chans, output_stride
        stem, *stage_channels, last = CHANNELS[width_mult]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        plan, strides = stage_dilations(output_stride)
        inp = stem
        for name, repeats, oup, (stride, first_dilation, dilation) in zip(_STAGES, STAGE_REPEATS, stage_channels, plan):
            units = [ShuffleV2Block(inp, oup, downsample=True, stride=stride, dilation=first_dilation)]
            units += [
                ShuffleV2Block(oup, oup, downsample=False, stride=1, dilation=dilation) for _ in range(repeats - 1)
            ]
            setattr(self, name, nn.Sequential(*units))
            inp = oup
        self.conv5 = nn.Sequential(
            nn.Conv2d(inp, last, 1, bias=False),
            nn.BatchNorm2d(last),
            nn.ReLU(inplace=True),
        )
        self._finish((stem, stem, *stage_channels[:2], last), strides, out_indices)

    def _levels(self) -> list[list[nn.Module]]:
        return [[self.conv1], [self.maxpool], [self.stage2], [self.stage3], [self.stage4, self.conv5]]

    def truncate_(self) -> None:
        """Drop the modules after the deepest selected level (they would get no gradient)."""
        for name, level in (("stage2", 2), ("stage3", 3), ("stage4", 4), ("conv5", 4)):
            if level > self.out_indices[-1]:
                setattr(self, name, None)


def _torchvision_state_dict(width_mult: float, architecture: str) -> dict[str, torch.Tensor]:
    """Fetch torchvision's ImageNet weights for a width (cached under TORCH_HOME)."""
    import torchvision.models

    weights = getattr(torchvision.models, TORCHVISION_WEIGHTS[width_mult]).IMAGENET1K_V1
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, map_location="cpu")
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        raise download_error(architecture, f"{weights.url} (torchvision {weights})", err) from err


@register_backbone(
    "shufflenet_v2",
    paper="Ma et al., ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, ECCV 2018",
    variants=[{"width_mult": w} for w in CHANNELS if w != 1.0],
)
def shufflenet_v2(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """ShuffleNetV2 at widths 0.5, 1.0, 1.5 and 2.0; taps at strides 2, 4, 8, 16, 32 (the last after conv5).

    `pretrained=True` loads torchvision's ImageNet weights; `pretrained="path.pth"` a file in
    torchvision's layout (e.g. `torchvision.models.shufflenet_v2_x1_0().state_dict()`).
    """
    if width_mult not in CHANNELS:
        raise ValueError(f"shufflenet_v2 width_mult {width_mult} is not supported; choose one of {sorted(CHANNELS)}")
    reject_expansion(
        "shufflenet_v2",
        feature_location,
        missing="inverted-residual expansion layers to tap",
        why="its units are channel-shuffled group or split convolutions",
    )
    architecture = f"shufflenet_v2 (width_mult={width_mult})"
    model = ShuffleNetV2(width_mult=width_mult, output_stride=output_stride, out_indices=out_indices, in_chans=in_chans)
    if pretrained not in (False, None):
        if pretrained is True:
            state_dict, source = _torchvision_state_dict(width_mult, architecture), "torchvision ImageNet weights"
        else:
            state_dict, source = read_state_dict(pretrained), str(pretrained)
        load_checked(
            model,
            state_dict,
            source=source,
            architecture=f"{architecture} (torchvision layout)",
            ignore=("fc.*",),
            in_chans=in_chans,
            stem_keys=("conv1.0.weight",),
        )
    model.truncate_()  # after loading, so the whole checkpoint was checked
    return model
