"""SkipblockNet (SkipNet-M): our own dense-capable version that loads the authors' checkpoint.

Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021. https://arxiv.org/abs/2107.11170
Reference code: https://github.com/lusinlu/bias-loss-skipblocknet (`skipnet.py`, `SkipNet`).

The network is a MobileNetV3-style stack of inverted residuals plus two "skip blocks" that average-pool
the stride-2 map down to the stride-8 and stride-16 maps and add a bottleneck of it there. Same layers,
parameter names and numbers as the reference; what we changed (see docs/backbones_skipblocknet.md):

- The skip blocks pool to the size of the map they are added to, not to the fixed 28 / 14 of the
  reference; at 224x224 this is the same computation, elsewhere it is what makes any input size work.
- Output stride 16 / 8 by dilation (DeepLab's rule), the skip blocks dilated like the stage they join.
- Five taps at strides 2, 4, 8, 16, 32; `feature_location="expansion"` taps expansion outputs.
- Modules after the deepest requested tap are dropped (after loading weights), so every parameter
  gets a gradient.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from backbones._base import FEATURE_LOCATIONS, SUPPORTED_OUTPUT_STRIDES, Backbone, resolve_out_indices
from backbones._dilation import dilate_stage_, dilation_plan, running_strides
from backbones._features import FeatureInfo
from backbones._registry import Pretrained, register_backbone
from backbones._skipblock_blocks import HardSwish, InvertedResidual, SkipBlock, conv_bn_act, make_divisible
from backbones._weights import load_checked, read_state_dict

PAPER = "Abrahamyan et al., Bias Loss for Mobile Neural Networks, ICCV 2021"
WEIGHTS_PAGE = "https://drive.google.com/drive/folders/1G3UR8wtTFB8S-9Fp6sRtfn9Vtfb6XcTU"
REFERENCE_REPO = "https://github.com/lusinlu/bias-loss-skipblocknet"

# SkipNet-M inverted residuals, the reference's `cfgs`:
# (kernel, expansion ratio, out channels, squeeze-excite, hard swish, stride, ends a `blocks` stage).
_BLOCKS = (
    (3, 4, 24, False, False, 2, False),
    (3, 3, 24, False, False, 1, False),
    (5, 3, 40, True, False, 2, False),
    (5, 3, 40, True, False, 1, False),
    (5, 6, 40, True, True, 1, True),
    (3, 6, 80, False, True, 2, False),
    (3, 2.5, 80, False, True, 1, False),
    (3, 2.3, 80, False, True, 1, False),
    (3, 2.3, 80, False, True, 1, True),
    (3, 6, 112, True, True, 1, False),
    (3, 6, 112, True, True, 1, True),
    (5, 6, 160, True, True, 2, False),
    (5, 6, 160, True, True, 1, False),
    (5, 6, 160, True, True, 1, True),
)
# The reference's `cfgs_skip` minus the fixed pooling size: (expansion ratio, out channels, kernel).
_SKIPS = {"skip1": (6, 40, 5), "skip2": (2.3, 80, 3)}
# Which skip block is added after which block (flat index into _BLOCKS): the reference's forward adds
# skip1 to the output of blocks[0] (row 4) and skip2 to the output of blocks[1] (row 8).
_SKIP_AFTER_ROW = {4: "skip1", 8: "skip2"}
# Rows [start, end) of _BLOCKS making up feature levels 1..4 (level 0 is stem + base block, stride 2);
# each level's first row is the block that downsamples into it.
_LEVEL_ROWS = {1: (0, 2), 2: (2, 5), 3: (5, 11), 4: (11, 14)}
_STEM_KEYS = ("first_layer.0.weight",)


class SkipblockNet(Backbone):
    """SkipNet-M as a multi-scale feature extractor, in the reference's parameter layout.

    Levels (stage taps, width 1.0): 16 ch at stride 2 (base block), 24 at 4 (second block), 40 at 8
    (blocks[0] + skip1), 112 at 16 (blocks[2]), 960 at 32 (the final 1x1 conv). Expansion taps: the
    expansion output of the first block of the next level (64, 72, 240, 672 ch) and the final 1x1 conv.

    Args:
        width_mult: Channel multiplier (the reference's `width`); 1.0 is SkipNet-M.
        output_stride: 32, 16 or 8; deeper strides become dilation.
        out_indices: Levels to return (None for all five).
        feature_location: "stage" or "expansion".
        in_chans: Input channels.
        pretrained: False, or a local `.pth` / `.safetensors` file in the reference's key layout
            (classifier keys are ignored).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        output_stride: int = 32,
        out_indices: Sequence[int] | None = None,
        feature_location: str = "stage",
        in_chans: int = 3,
        pretrained: bool | str | os.PathLike = False,
    ) -> None:
        super().__init__()
        if pretrained is True:
            raise pretrained_error()
        if not width_mult > 0:
            raise ValueError(f"skipblocknet width_mult must be positive, got {width_mult}")
        if output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(
                f"skipblocknet output_stride must be one of {SUPPORTED_OUTPUT_STRIDES}, got {output_stride}"
            )
        if feature_location not in FEATURE_LOCATIONS:
            raise ValueError(f"unknown feature_location '{feature_location}'; choose one of {FEATURE_LOCATIONS}")
        self.name, self.in_chans, self.output_stride = "skipblocknet", in_chans, output_stride
        self.architecture = f"skipblocknet (SkipNet-M layout, width_mult={width_mult})"
        self._expansion = feature_location == "expansion"

        base = make_divisible(16 * width_mult)
        self.first_layer = conv_bn_act(in_chans, base, 3, stride=2)
        self.base_block = InvertedResidual(base, base, base, 3, 1, use_se=False, use_hs=True)
        self.blocks = nn.ModuleList()
        stage, channels = [], base
        for kernel, ratio, out, use_se, use_hs, stride, ends_stage in _BLOCKS:
            out = make_divisible(out * width_mult)
            stage.append(
                InvertedResidual(channels, make_divisible(channels * ratio), out, kernel, stride, use_se, use_hs)
            )
            channels = out
            if ends_stage:
                self.blocks.append(nn.Sequential(*stage))
                stage = []
        # The reference hard-codes the skip blocks' input as 16 channels (so only widths whose base is
        # 16 build there); using the base width is the same at those widths and works at all others.
        for name, (ratio, out, kernel) in _SKIPS.items():
            setattr(self, name, SkipBlock(base, make_divisible(base * ratio), make_divisible(out * width_mult), kernel))
        self.conv = conv_bn_act(channels, make_divisible(channels * _BLOCKS[-1][1]), 1)
        self._init_weights()

        if pretrained not in (False, None):
            load_checked(
                self,
                read_state_dict(pretrained),
                source=str(pretrained),
                architecture=self.architecture,
                ignore=("classifier.*",),
                in_chans=in_chans,
                stem_keys=_STEM_KEYS,
            )
        self._dilate(output_stride)

        rows = self._rows()
        stage_channels = [base] + [rows[end - 1].conv[-1].num_features for _, end in _LEVEL_ROWS.values()]
        stage_channels[-1] = self.conv[0].out_channels
        if self._expansion:
            # Level l's expansion tap is the expanded input of level l + 1's first (downsampling) block.
            channels_all = [rows[_LEVEL_ROWS[level + 1][0]].hidden_channels for level in range(4)]
            channels_all.append(stage_channels[-1])
        else:
            channels_all = stage_channels
        all_info = FeatureInfo(tuple(channels_all), tuple(running_strides([2] * 5, output_stride)))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), self.name)
        self.feature_info = all_info.select(self.out_indices)
        self._depth = max(self.out_indices)
        self._prune()

    def _rows(self) -> list[InvertedResidual]:
        """The inverted residuals in execution order (flat indices match _BLOCKS)."""
        return [block for stage in self.blocks for block in stage]

    def _init_weights(self) -> None:
        """The reference's initialization (fan-out normal convs, unit BN, small linear layers)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _dilate(self, output_stride: int) -> None:
        """Trade the strides of levels 3 and 4 for dilation; the weights stay as they are."""
        rows = self._rows()
        plan = dilation_plan([2] * 5, output_stride)
        for level, (start, end) in _LEVEL_ROWS.items():
            stride, first_dilation, dilation = plan[level]
            if stride == 2:
                continue
            dilate_stage_(nn.Sequential(*rows[start:end]), first_dilation, dilation)
        # A skip block works at the resolution of the level it joins, after that level's downsampling,
        # so it takes that level's later dilation: its receptive field in pixels stays the reference's.
        for row, name in _SKIP_AFTER_ROW.items():
            level = next(lvl for lvl, (start, end) in _LEVEL_ROWS.items() if start <= row < end)
            dilation = plan[level][2]
            dilate_stage_(getattr(self, name), dilation, dilation)

    def _prune(self) -> None:
        """Drop the modules after the deepest requested tap (weights are loaded already)."""
        if self._depth == 4:
            return
        if self._expansion:
            # Level `depth`'s tap is the expansion of the next level's first block: keep only that part.
            entry = _LEVEL_ROWS[self._depth + 1][0]
            del self._rows()[entry].conv[3:]
            full_rows, keep_rows = entry, entry + 1
        else:
            full_rows = keep_rows = _LEVEL_ROWS[self._depth][1] if self._depth > 0 else 0
        offset, stage_sizes = 0, []
        for stage in self.blocks:
            stage_sizes.append((offset, len(stage)))
            offset += len(stage)
        for s in reversed(range(len(self.blocks))):
            start, size = stage_sizes[s]
            keep = min(max(keep_rows - start, 0), size)
            if keep == 0:
                del self.blocks[s]
            else:
                del self.blocks[s][keep:]
        for row, name in _SKIP_AFTER_ROW.items():
            if row >= full_rows:
                setattr(self, name, None)
        self.conv = None

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, in_chans, H, W) -> selected maps, each (N, C_i, ceil(H / s_i), ceil(W / s_i))."""
        taps: list[Tensor] = []
        x = self.first_layer(x)  # (N, 16, H/2, W/2)
        x = base = self.base_block(x)  # (N, 16, H/2, W/2)
        if not self._expansion and 0 in self.out_indices:
            taps.append(x)
        if not self._expansion and self._depth == 0:
            return taps
        rows = self._rows()
        for level, (start, end) in _LEVEL_ROWS.items():
            entry = rows[start]
            if self._expansion and level - 1 == self._depth:
                taps.append(entry.expand(x))  # (N, hidden, H/2^level, W/2^level): the deepest tap
                return taps
            hidden, x = entry.forward_with_expansion(x)
            if self._expansion and level - 1 in self.out_indices:
                taps.append(hidden)  # (N, hidden, same size as the previous level)
            for row in range(start, end):
                if row > start:
                    x = rows[row](x)
                if row in _SKIP_AFTER_ROW:
                    # Pool the stride-2 base map to this map's actual size (the reference: fixed 28 / 14).
                    x = x + getattr(self, _SKIP_AFTER_ROW[row])(base, x.shape[-2:])  # (N, C, h, w)
            if level == 4:
                x = self.conv(x)  # (N, 960, H/32, W/32)
            if (not self._expansion or level == 4) and level in self.out_indices:
                taps.append(x)
            if not self._expansion and level == self._depth:
                break  # (expansion taps stop at the next level's entry block, above)
        return taps


class SkipblockNetClassifier(SkipblockNet):
    """The reference's ImageNet classifier (backbone + its head), for counting and checking only.

    Its state dict has exactly the reference's keys, so the authors' checkpoint loads strictly. Unlike
    a Backbone, `forward` returns logits (N, num_classes); it is not registered.

    Args:
        num_classes: Classifier outputs.
        width_mult: Channel multiplier.
        in_chans: Input channels.
        dropout: Dropout before the last linear layer.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_chans: int = 3, dropout: float = 0.2):
        super().__init__(width_mult=width_mult, out_indices=(4,), in_chans=in_chans)
        features = self.feature_info.channels[-1]
        # The reference's "large" head: 1280 hidden units, widened only for width_mult > 1.
        hidden = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.classifier = nn.Sequential(
            nn.Linear(features, hidden), HardSwish(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """(N, in_chans, H, W) -> logits (N, num_classes)."""
        (features,) = super().forward(x)  # (N, 960, H/32, W/32)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)  # (N, 960)
        return self.classifier(pooled)


def pretrained_error() -> RuntimeError:
    """The error for pretrained=True: the authors publish the weights on Google Drive only."""
    return RuntimeError(
        "skipblocknet has no stable download URL for its ImageNet weights: the authors publish SkipNet-M "
        f"('skipnet-m_76.2.pth') only in a Google Drive folder, {WEIGHTS_PAGE} (linked from the README of "
        f"{REFERENCE_REPO}). Download that file by hand and pass its path: "
        "create_backbone('skipblocknet', pretrained='/path/to/skipnet-m_76.2.pth')."
    )


# Any positive width builds; these are the named ones (smp `lw-skipblocknet_050`, ...).
@register_backbone("skipblocknet", paper=PAPER, variants=[{"width_mult": 0.5}, {"width_mult": 0.75}])
def skipblocknet(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    width_mult: float = 1.0,
) -> Backbone:
    """SkipblockNet (SkipNet-M at width_mult=1.0); taps at strides 2, 4, 8, 16, 32; any input size."""
    if pretrained is True:
        raise pretrained_error()
    return SkipblockNet(
        width_mult=width_mult,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
        pretrained=pretrained,
    )
