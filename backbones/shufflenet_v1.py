"""ShuffleNetV1, our own dense-capable implementation that loads the authors' checkpoints.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
CVPR 2018. https://arxiv.org/abs/1707.01083

Module names follow the official PyTorch code (megvii-model/ShuffleNet-Series, ShuffleNetV1/network.py
and blocks.py: `first_conv`, `maxpool`, `features.N.branch_main_1/branch_main_2`), so its published
checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from backbones._base import Backbone, reject_expansion
from backbones._registry import Pretrained, register_backbone
from backbones._shuffle_blocks import LevelBackbone, ShuffleV1Block, stage_dilations
from backbones._weights import load_checked, read_state_dict

# (groups, width_mult) -> (stem, stage2, stage3, stage4) channels. Groups 3 and 8 at every width are
# the official code's tables (its stems do not scale linearly: 0.5x g=8 uses 16, 1.5x uses 24); groups
# 1, 2 and 4 at 1.0x are the paper's Table 1, which the official code does not provide.
CHANNELS = {
    (1, 1.0): (24, 144, 288, 576),
    (2, 1.0): (24, 200, 400, 800),
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (4, 1.0): (24, 272, 544, 1088),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}
STAGE_REPEATS = (4, 8, 4)
VALID_COMBOS = "groups 1, 2, 3, 4 or 8 at width_mult 1.0; width_mult 0.5, 1.0, 1.5 or 2.0 at groups 3 and 8"
OFFICIAL_WEIGHTS = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"


def official_file_name(groups: int, width_mult: float) -> str:
    """Name of the official checkpoint in the authors' OneDrive folder (ShuffleNetV1/Group<g>/models/)."""
    size = f"{float(width_mult):.1f}x"
    return f"{size}.pth.tar" if groups == 3 else f"snetv1_group{groups}_{size}.pth.tar"


class ShuffleNetV1(LevelBackbone):
    """ShuffleNetV1 as a 5-level feature extractor (strides 2, 4, 8, 16, 32).

    Taps: the stem conv (stride 2), the max-pool (4) and the last unit of stages 2, 3 and 4 (8, 16,
    32). Deeper strides than `output_stride` become dilation: a stage's first unit keeps stride 1
    (its depthwise conv and its average-pool shortcut) and the previous dilation, the later units
    the multiplied dilation.

    Args:
        groups: Groups of the pointwise convolutions.
        width_mult: Channel multiplier.
        output_stride: 8, 16 or 32.
        out_indices: Levels to return, None for all five.
        in_chans: Input channels.
    """

    def __init__(
        self, *, groups: int, width_mult: float, output_stride: int, out_indices: Sequence[int] | None, in_chans: int
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.output_stride = "shufflenet_v1", in_chans, output_stride
        stem, *stage_channels = CHANNELS[(groups, width_mult)]
        self.first_conv = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        plan, strides = stage_dilations(output_stride)
        blocks, inp, self._stage_ends = [], stem, []
        for stage, (repeats, oup, (stride, first_dilation, dilation)) in enumerate(
            zip(STAGE_REPEATS, stage_channels, plan)
        ):
            for i in range(repeats):
                blocks.append(
                    ShuffleV1Block(
                        inp,
                        oup,
                        groups=groups,
                        first_group=stage == 0 and i == 0,
                        downsample=i == 0,
                        stride=stride if i == 0 else 1,
                        dilation=first_dilation if i == 0 else dilation,
                    )
                )
                inp = oup
            self._stage_ends.append(len(blocks))
        self.features = nn.Sequential(*blocks)
        self._finish((stem, stem, *stage_channels), strides, out_indices)

    def _levels(self) -> list[list[nn.Module]]:
        blocks = list(self.features)
        a, b, c = self._stage_ends
        return [[self.first_conv], [self.maxpool], blocks[:a], blocks[a:b], blocks[b:c]]

    def truncate_(self) -> None:
        """Drop the units after the deepest selected level (they would get no gradient)."""
        deepest = self.out_indices[-1]
        keep = 0 if deepest < 2 else self._stage_ends[deepest - 2]
        self.features = nn.Sequential(*list(self.features)[:keep])


@register_backbone(
    "shufflenet_v1",
    paper="Zhang et al., ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices, CVPR 2018",
    variants=[{"groups": g, "width_mult": w} for g, w in CHANNELS if (g, w) != (3, 1.0)],
)
def shufflenet_v1(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    groups: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """ShuffleNetV1 with `groups` 1/2/3/4/8 at 1.0x, widths 0.5-2.0x at groups 3 and 8; taps at strides 2-32.

    `pretrained=True` is refused (the authors publish their checkpoints only in a OneDrive folder);
    `pretrained="path.pth.tar"` loads an official checkpoint (or any file in its key layout).
    """
    if (groups, width_mult) not in CHANNELS:
        raise ValueError(
            f"shufflenet_v1 has no configuration groups={groups}, width_mult={width_mult}; valid: {VALID_COMBOS}"
        )
    reject_expansion(
        "shufflenet_v1",
        feature_location,
        missing="inverted-residual expansion layers to tap",
        why="its units are channel-shuffled group or split convolutions",
    )
    architecture = f"shufflenet_v1 (groups={groups}, width_mult={width_mult})"
    if pretrained is True:
        if groups not in (3, 8):
            raise ValueError(
                f"no ImageNet weights are published for {architecture} (the authors released groups 3 and 8); "
                f"use pretrained=False or pass your own file: pretrained='/path/to/weights.pth'"
            )
        raise ValueError(
            f"the ImageNet weights of {architecture} have no stable download URL: the authors publish them "
            f"in a OneDrive folder ({OFFICIAL_WEIGHTS}, linked from github.com/megvii-model/ShuffleNet-Series) as "
            f"ShuffleNetV1/Group{groups}/models/{official_file_name(groups, width_mult)}. Download it and pass "
            f"its path: create_backbone('shufflenet_v1', groups={groups}, width_mult={width_mult}, "
            f"pretrained='/path/to/{official_file_name(groups, width_mult)}')"
        )
    model = ShuffleNetV1(
        groups=groups, width_mult=width_mult, output_stride=output_stride, out_indices=out_indices, in_chans=in_chans
    )
    if pretrained not in (False, None):
        load_checked(
            model,
            read_state_dict(pretrained),
            source=str(pretrained),
            architecture=f"{architecture} (megvii-model/ShuffleNet-Series layout)",
            ignore=("classifier.*",),
            in_chans=in_chans,
            stem_keys=("first_conv.0.weight",),
        )
    model.truncate_()  # after loading, so the whole checkpoint was checked
    return model
