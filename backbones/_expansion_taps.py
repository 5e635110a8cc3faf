"""Expansion taps of timm inverted-residual nets (SSDLite's feature locations).

SSDLite (Sandler et al., MobileNetV2, CVPR 2018, section 6.2) does not tap block outputs: it taps the
*expansion* of the block that downsamples next, i.e. the 1x1 conv (+BN+activation) that widens the
features before the strided depthwise conv. In TensorFlow's MobileNetV2 that is
`layer_15/expansion_output` (576 channels at stride 16), in torchvision's SSDLite MobileNetV3 the
`block[0]` of the C4 block (672 channels). The deepest level is the network's last 1x1 conv (1280
channels for MobileNetV2 and EfficientNet, 960 / 576 for MobileNetV3 large / small).

This is NOT timm's `feature_location="expansion"`, which hooks the input of the last block's projection
(post-depthwise activations). Here timm's model (the classifier for EfficientNet-style nets, whose
conv_head we need; the features model for MobileNetV3, which timm only dilates there) is cut after the
deepest tap and run block by block; its modules and state-dict keys stay timm's, so timm checkpoints
load unchanged. The timm model is built by `backbones._timm_family.build_timm_backbone`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from backbones._base import Backbone, resolve_out_indices
from backbones._features import FeatureInfo
from backbones._registry import Pretrained
from backbones._timm_internals import (
    DepthwiseSeparableConv,
    EdgeResidual,
    EfficientNet,
    InvertedResidual,
    MobileNetV3Features,
)
from backbones._weights import load_checked, read_state_dict

# Keys of a MobileNetV3 classifier checkpoint that its features model lacks: all after the global pooling.
_MNV3_HEAD_KEYS = ("classifier.*", "conv_head.*", "norm_head.*")


class _ExpansionOnly(nn.Module):
    """What remains of the deepest tap block: its expansion conv, keeping timm's key names.

    Args:
        block: An InvertedResidual (keeps `conv_pw`, `bn1`) or a DepthwiseSeparableConv, which has no
            expansion: its tap is its input, and nothing of it is kept.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        expands = isinstance(block, InvertedResidual)
        self.conv_pw = block.conv_pw if expands else None
        self.bn1 = block.bn1 if expands else None

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C_expanded, H, W)."""
        if self.conv_pw is None:
            return x
        return self.bn1(self.conv_pw(x))


def _check_tap_block(block: nn.Module, architecture: str) -> int:
    """Channels of a block's expansion tap; refuses blocks whose forward `_tap_forward` would not reproduce."""
    if type(block) is InvertedResidual and block.conv_s2d is None and not block.has_skip:
        return block.conv_pw.out_channels
    if type(block) is DepthwiseSeparableConv and block.conv_s2d is None and not block.has_skip:
        return block.conv_dw.in_channels
    if type(block) is EdgeResidual and not block.has_skip:
        # EfficientNetV2's FusedMBConv: its expansion is the strided 3x3 conv itself, so no expanded map
        # exists at the input's stride; like a depthwise-separable block, its tap is its input.
        return block.conv_exp.in_channels
    raise NotImplementedError(
        f"{architecture}: no expansion tap is defined for a downsampling block of type {type(block).__name__} "
        f"(with a skip connection or space-to-depth stem)"
    )


def _tap_forward(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Run a tap block, returning (its expansion tap, its output).

    Equals timm's `InvertedResidual.forward` for blocks without a skip (checked when built), with the
    expanded activations kept on the way. Blocks without a 1x1 expansion at their input's stride
    (DepthwiseSeparableConv, EfficientNetV2's FusedMBConv `EdgeResidual`) are tapped at their input.
    """
    if isinstance(block, _ExpansionOnly):
        return block(x), None
    if isinstance(block, InvertedResidual):
        tap = block.bn1(block.conv_pw(x))  # (N, C_in * expand_ratio, H, W)
        x = block.bn2(block.conv_dw(tap))  # depthwise conv: the block's stride / dilation
        x = block.se(block.aa(x))
        return tap, block.bn3(block.conv_pwl(x))  # (N, C_out, H / s, W / s)
    return x, block(x)  # no expansion: the tap is the block's input


class ExpansionTimmBackbone(Backbone):
    """A timm MobileNetV2 / MobileNetV3 / EfficientNet with SSDLite's expansion taps.

    Level i < last (stride s_i) is the expansion output of the first block of the stage after timm's
    stage feature i, the block that downsamples from s_i to 2 s_i; the last level is the final 1x1 conv
    (EfficientNet-style `conv_head` + `bn2`, or MobileNetV3's last block: its `conv_head` follows the
    global pooling, is not a feature map, and is not built). Modules after the deepest requested tap are
    removed, so every parameter left takes part in the output.

    Args:
        name: Our registered name.
        architecture: Human description for messages.
        timm_name: timm variant, for messages.
        model: The timm network: an EfficientNet classifier built with `num_classes=0`, or (mobilenetv3)
            a `MobileNetV3Features`, at `output_stride` and `in_chans`, with or without hub weights.
        pretrained: False, True (hub weights already in `model`), or a local file in timm's classifier
            layout, loaded here once the unused modules are removed.
        output_stride: 8, 16 or 32 (what `model` was built at).
        out_indices: Levels to return, None for all.
        in_chans: Input channels.
        mobilenetv3: Whether `model` is a timm MobileNetV3 features model.
    """

    def __init__(
        self,
        *,
        name: str,
        architecture: str,
        timm_name: str,
        model: nn.Module,
        pretrained: Pretrained,
        output_stride: int,
        out_indices: Sequence[int] | None,
        in_chans: int,
        mobilenetv3: bool,
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.output_stride = name, in_chans, output_stride
        if not isinstance(model, (EfficientNet, MobileNetV3Features)):
            raise TypeError(f"{architecture}: expansion taps need a timm EfficientNet or MobileNetV3 model")
        # timm's stage features: 'bn1' (the stem) or 'blocks.<s>' (the end of stage s), shallow to deep.
        stages = model.feature_info.get_dicts() if mobilenetv3 else model.feature_info
        self._tap_stages = tuple(0 if f["module"] == "bn1" else int(f["module"].split(".")[1]) + 1 for f in stages[:-1])
        # EfficientNet's conv_head runs on the feature map; MobileNetV3's last level is its last block.
        self._conv_head = not mobilenetv3
        # MobileNetV3Features applies the stem activation separately; EfficientNet's bn1 includes it.
        self._stem_act = mobilenetv3
        channels = [_check_tap_block(model.blocks[s][0], architecture) for s in self._tap_stages]
        channels.append(model.conv_head.out_channels if self._conv_head else stages[-1]["num_chs"])
        all_info = FeatureInfo(tuple(channels), tuple(f["reduction"] for f in stages))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), name)
        self.feature_info = all_info.select(self.out_indices)
        self._num_levels = self.out_indices[-1] + 1

        timm_keys = set(model.state_dict())
        self.model = _prune(model, self._tap_stages, self._num_levels, self._conv_head)
        if pretrained not in (False, True, None):
            # Keys of the modules just removed are not needed; any other difference is a mismatch.
            removed = timm_keys - set(self.model.state_dict())
            state_dict = {k: v for k, v in read_state_dict(pretrained).items() if k not in removed}
            load_checked(
                self.model,
                state_dict,
                source=str(pretrained),
                architecture=f"{architecture} (timm '{timm_name}' layout)",
                ignore=_MNV3_HEAD_KEYS if mobilenetv3 else ("classifier.*",),
                in_chans=in_chans,
                stem_keys=("conv_stem.weight",),
            )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> selected maps, see `Backbone.forward`."""
        x = self.model.bn1(self.model.conv_stem(x))  # (N, C_stem, H / 2, W / 2)
        if self._stem_act:
            x = self.model.act1(x)
        levels: list[Tensor] = []
        for s, stage in enumerate(self.model.blocks):
            for j, block in enumerate(stage):
                if j == 0 and s in self._tap_stages:
                    tap, x = _tap_forward(block, x)
                    levels.append(tap)  # (N, C_expanded, H / s_i, W / s_i)
                else:
                    x = block(x)
        if len(levels) < self._num_levels:  # the last level: the final 1x1 conv
            levels.append(self.model.bn2(self.model.conv_head(x)) if self._conv_head else x)
        return [levels[i] for i in self.out_indices]


def _prune(model: nn.Module, tap_stages: Sequence[int], num_levels: int, conv_head: bool) -> nn.Module:
    """Drop the classifier and everything after the deepest used tap, in place; timm key names stay."""
    for head in ("global_pool", "classifier"):  # EfficientNet's classifier (MobileNetV3 comes without)
        if hasattr(model, head):
            setattr(model, head, None)
    if num_levels <= len(tap_stages):  # the deepest level is an expansion: cut inside its block
        last = tap_stages[num_levels - 1]
        stages = list(model.blocks)[:last] + [nn.Sequential(_ExpansionOnly(model.blocks[last][0]))]
        model.blocks = nn.Sequential(*stages)
        if conv_head:
            model.conv_head = model.bn2 = None
    return model
