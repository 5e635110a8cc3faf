"""Xception: the original network and DeepLab's aligned Xception-65, wrapping timm.

Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017.
https://arxiv.org/abs/1610.02357
Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation"
(DeepLabv3+), ECCV 2018. https://arxiv.org/abs/1802.02611

Both use timm's classifier network with its own feature taps (`forward_intermediates`) and its own
pruning of the layers after the deepest tap. timm dilates Xception-65 itself; the original Xception
(`legacy_xception`) has no output_stride in timm, so it is dilated here (`_dilate_legacy_`), and its
unpadded stem is given 3 pixels of zero padding so that every map has ceil(H / stride) rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from backbones._base import Backbone, reject_expansion, resolve_out_indices
from backbones._dilation import dilation_plan, running_strides
from backbones._features import FeatureInfo
from backbones._registry import Pretrained, register_backbone
from backbones._timm_family import create_timm_model
from backbones._weights import load_checked, read_state_dict

# The original stem (3x3 stride-2 conv, then 3x3 conv, neither padded) gives floor((H - 3) / 2) - 1
# rows. Zero padding of 3 before it gives floor((H + 3) / 2) - 1 = ceil(H / 2), and is exactly timm's
# network run on the zero-padded image: padding conv1 by 3 is the same computation.
LEGACY_STEM_PADDING = 3


class TimmIntermediatesBackbone(Backbone):
    """A timm classifier network seen through its `forward_intermediates` taps.

    The classifier is removed and the layers after the deepest requested tap are pruned (timm's
    `prune_intermediate_layers`), so every parameter feeds a returned map. Weights are loaded before
    pruning, so a full checkpoint in timm's layout loads whatever `out_indices` asks for.

    Args:
        name: Our registered name.
        architecture: Human description for messages.
        timm_name: timm model name (its default pretrained tag chooses the weights).
        pretrained: False, True (timm's download) or a local file in timm's layout.
        output_stride: 8, 16 or 32.
        out_indices: Levels to return, None for all.
        in_chans: Input channels.
        stem_keys: Keys of the first convolution's weight (adapted when in_chans != 3).
        head_keys: fnmatch patterns of the checkpoint's classifier keys, ignored when loading.
        timm_kwargs: Extra `timm.create_model` arguments (e.g. output_stride where timm dilates).
        convert: Applied to the loaded timm network before pruning (our own dilation and padding).
    """

    def __init__(
        self,
        *,
        name: str,
        architecture: str,
        timm_name: str,
        pretrained: Pretrained,
        output_stride: int,
        out_indices: Sequence[int] | None,
        in_chans: int,
        stem_keys: Sequence[str],
        head_keys: Sequence[str],
        timm_kwargs: dict | None = None,
        convert: Callable[[nn.Module], None] | None = None,
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.output_stride = name, in_chans, output_stride
        kwargs = dict(in_chans=in_chans, **(timm_kwargs or {}))
        self.model = create_timm_model(timm_name, architecture=architecture, pretrained=pretrained, **kwargs)
        self.model.reset_classifier(0, "")  # a feature extractor has no classifier
        if pretrained not in (False, True, None):
            load_checked(
                self.model,
                read_state_dict(pretrained),
                source=os.fspath(pretrained),
                architecture=f"{architecture} (timm '{timm_name}' layout)",
                ignore=head_keys,
                in_chans=in_chans,
                stem_keys=stem_keys,
            )
        if convert is not None:
            convert(self.model)
        info = self.model.feature_info
        channels = tuple(f["num_chs"] for f in info)
        all_info = FeatureInfo(channels, tuple(running_strides((2,) * len(channels), output_stride)))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), name)
        self.feature_info = all_info.select(self.out_indices)
        self.model.prune_intermediate_layers(list(self.out_indices), prune_head=True)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> selected maps, see `Backbone.forward`."""
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True, stop_early=True
        )


def _dilate_separable_(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a 3x3 depthwise conv whose padding was 1 ("same"), keeping it "same"."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


def _dilate_legacy_block_(block: nn.Module, first_dilation: int, dilation: int) -> None:
    """Dilate one block of timm's legacy Xception, in place (DeepLab's rule).

    A strided block downsamples twice in parallel: a strided max-pool closing `rep`, and a strided
    1x1 `skip` on the block input. Every separable conv of `rep` runs before the pool, so all of them
    keep `first_dilation`, as does the pool itself (stride 1, dilated by `first_dilation`). A block
    without stride lies wholly after the removed stride and gets `dilation`. (The generic
    `dilate_stage_` visits modules in registration order, and this Block registers `skip` before
    `rep`, so it would give `rep` the later dilation; it also leaves pools undilated.)
    """
    strided = block.skip is not None and max(block.skip.stride) > 1
    rate = first_dilation if strided else dilation
    if block.skip is not None:
        block.skip.stride = (1, 1)
    for index, module in enumerate(block.rep):
        if isinstance(module, nn.MaxPool2d):
            block.rep[index] = _dilated_max_pool(module, first_dilation)
        elif hasattr(module, "pointwise"):  # timm's SeparableConv2d: conv1 (3x3 depthwise) + pointwise
            _dilate_separable_(module.conv1, rate)


def _dilated_max_pool(pool: nn.MaxPool2d, dilation: int) -> nn.Module:
    """The stride-1 version of a 3x3 stride-2 "same" max-pool, dilated by `dilation`.

    PyTorch's max_pool2d refuses padding larger than half the kernel, so a dilated pool pads with
    -inf itself (what the pool's own padding means).
    """
    if dilation == 1:
        return nn.MaxPool2d(pool.kernel_size, stride=1, padding=pool.padding)
    return nn.Sequential(
        nn.ConstantPad2d(dilation, float("-inf")), nn.MaxPool2d(pool.kernel_size, stride=1, dilation=dilation)
    )


def _convert_legacy_(model: nn.Module, output_stride: int) -> None:
    """Pad the stem for ceil(H / 2) rows and dilate the blocks past `output_stride`, in place."""
    model.conv1.padding = (LEGACY_STEM_PADDING, LEGACY_STEM_PADDING)
    # Resolution groups: stem (conv1), block1, block2, block3-11, block12 + exit convs (conv3, conv4).
    groups = (None, [1], [2], list(range(3, 12)), [12])
    for level, (stride, first_dilation, dilation) in enumerate(dilation_plan((2, 2, 2, 2, 2), output_stride)):
        if stride == 2:
            continue
        first, *rest = groups[level]
        _dilate_legacy_block_(getattr(model, f"block{first}"), first_dilation, dilation)
        for index in rest:
            _dilate_legacy_block_(getattr(model, f"block{index}"), dilation, dilation)
        if level == 4:
            _dilate_separable_(model.conv3.conv1, dilation)
            _dilate_separable_(model.conv4.conv1, dilation)


_PLAIN_SEPARABLE = "its blocks are plain depthwise-separable convolutions"


@register_backbone(
    "xception", paper="Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017"
)
def xception(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
) -> Backbone:
    """The original Xception (timm legacy_xception, Keras weights, 299 input); taps at strides 2-32.

    Taps (timm's): stem (64 ch), ReLU'd outputs of block1 (128), block2 (256), block11 (728), and
    the exit flow (2048). The stem is zero-padded by 3 pixels (see `LEGACY_STEM_PADDING`).
    """
    reject_expansion("xception", feature_location, missing="expansion layers", why=_PLAIN_SEPARABLE)
    return TimmIntermediatesBackbone(
        name="xception",
        architecture="xception (original, Chollet 2017)",
        timm_name="legacy_xception",
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        in_chans=in_chans,
        stem_keys=("conv1.weight",),
        head_keys=("fc.*",),
        convert=lambda model: _convert_legacy_(model, output_stride),
    )


@register_backbone(
    "xception65",
    paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation "
    "(DeepLabv3+, aligned Xception-65), ECCV 2018",
)
def xception65(
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
) -> Backbone:
    """DeepLab's aligned Xception-65 (timm xception65, dilated by timm); taps at strides 2-32.

    Taps (timm's): the activation before the strided separable conv of blocks 0, 1, 2 and 19
    (128, 256, 728, 1024 ch) and the last block's output (2048).
    """
    reject_expansion("xception65", feature_location, missing="expansion layers", why=_PLAIN_SEPARABLE)
    return TimmIntermediatesBackbone(
        name="xception65",
        architecture="xception65 (aligned Xception-65, DeepLabv3+)",
        timm_name="xception65",
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        in_chans=in_chans,
        stem_keys=("stem.0.conv.weight",),
        head_keys=("head.*",),
        timm_kwargs={"output_stride": output_stride},
    )
