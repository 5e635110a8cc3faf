"""Checkpoint layouts: recognise whose key naming a state dict uses, and convert it to the one we load.

Users hold ImageNet checkpoints in the layout of the implementation they came from. litedense's nets
load one layout each: timm's for the nets that wrap timm (MobileNet V1/V2/V3, EfficientNet, PP-LCNet,
GhostNet, Xception), and the reference implementation's for our own nets (torchvision's ShuffleNetV2,
the official ShuffleNetV1 and SkipblockNet code). This module detects the layout of a state dict by key
patterns and converts the foreign layouts that describe a net we wrap:

- torchvision MobileNetV2, MobileNetV3-Large/Small, EfficientNet B0-B7 and EfficientNetV2 (`features.N...`)
  -> timm;
- torchvision ResNet (`conv1`, `bn1`, `layer1.0.conv1`, `fc`): timm's ResNet keeps these names, so the keys
  stay as they are;
- lukemelas EfficientNet-PyTorch, B0-B3 and the Lite models (`_conv_stem`, `_blocks.N`, `_fc`) -> timm;
- litedense's own `Backbone.state_dict()` (every key under `model.`) -> the wrapped model's layout.

Conversion renames keys only (one tensor reshaped: torchvision MobileNetV3's first classifier Linear is
timm's 1x1 `conv_head`); it never changes values. What a layout needs beyond its weights is declared
with it: torchvision's MobileNetV3 trained with BatchNorm eps 1e-3, the lukemelas EfficientNets with
TensorFlow's "same" padding (and eps 1e-3), which the family builders honour (see docs/weights.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

# timm's stage sizes (blocks per stage) of the flat torchvision nets, the last entry MobileNetV3's 1x1 conv
# stage. They depend on the architecture only, never on the width.
_TV_MOBILENET_V2_STAGES = (1, 2, 3, 4, 3, 3, 1)
_TV_MOBILENET_V3_STAGES = {15: (1, 2, 3, 4, 2, 3, 1), 11: (1, 2, 3, 2, 3, 1)}  # IR blocks -> stages
# EfficientNet's base repeats per stage; a depth coefficient d makes them ceil(d * r) (B0-B7 and Lite).
_EFFICIENTNET_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_EFFICIENTNET_DEPTHS = (1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1)


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout litedense recognises.

    Attributes:
        name: Short id, e.g. "torchvision-mobilenet_v2".
        description: What it is, for messages and docs.
        nets: The litedense backbones it can be loaded into.
        target: The layout it is converted to ("timm", or itself when our net loads it unchanged).
        bn_eps: BatchNorm epsilon the weights were trained with, when it differs from the default of the
            net they load into (the family builder sets it); None when they agree.
        padding: "same" when the source implementation pads like TensorFlow (the EfficientNet builder
            then builds timm's `tf_` variant), None otherwise.
    """

    name: str
    description: str
    nets: str
    target: str
    bn_eps: float | None = None
    padding: str | None = None


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("timm", "timm (`conv_stem`, `blocks.S.J`, `classifier`; or timm's Xception keys)", "timm-wrapped nets",
               "timm"),
        Layout("litedense", "litedense's own `Backbone.state_dict()` (the wrapped model's keys under `model.`)",
               "every net", "litedense"),
        Layout("torchvision-mobilenet_v2", "torchvision MobileNetV2 (`features.N.conv...`, `classifier.1`)",
               "mobilenet_v2", "timm"),
        Layout("torchvision-mobilenet_v3", "torchvision MobileNetV3 (`features.N.block...`, `classifier.0/3`)",
               "mobilenet_v3_large, mobilenet_v3_small", "timm", bn_eps=1e-3),
        Layout("torchvision-efficientnet", "torchvision EfficientNet (`features.S.J.block...`, `classifier.1`)",
               "efficientnet_b0-b3", "timm"),
        Layout("torchvision-efficientnet_v2", "torchvision EfficientNetV2 (`features.S.J.block...` with FusedMBConv "
               "stages, `classifier.1`)", "efficientnet_v2_s", "timm", bn_eps=1e-3),
        Layout("torchvision-resnet", "torchvision / timm ResNet (`conv1`, `bn1`, `layer1.0.conv1`, `fc`)",
               "resnet18, resnet34, resnet50", "timm"),
        Layout("lukemelas-efficientnet", "lukemelas EfficientNet-PyTorch (`_conv_stem`, `_blocks.N`, `_fc`)",
               "efficientnet_b0-b3, efficientnet_lite0", "timm", padding="same"),
        Layout("torchvision-shufflenet_v2", "torchvision ShuffleNetV2 (`conv1`, `stage2.N.branch1/2`, `conv5`, `fc`)",
               "shufflenet_v2", "torchvision-shufflenet_v2"),
        Layout("official-shufflenet_v1", "megvii-model ShuffleNet-Series ShuffleNetV1 (`first_conv`, "
               "`features.N.branch_main_1`)", "shufflenet_v1", "official-shufflenet_v1"),
        Layout("official-skipblocknet", "lusinlu bias-loss-skipblocknet SkipNet-M (`first_layer`, `blocks`)",
               "skipblocknet", "official-skipblocknet"),
    )
}  # fmt: skip


class UnknownLayoutError(ValueError):
    """A state dict whose keys match none of the layouts litedense reads."""


def accepted_layouts() -> str:
    """One line per accepted layout, for error messages."""
    return "\n".join(
        f"  - {layout.name}: {layout.description}; loads into {layout.nets}" for layout in LAYOUTS.values()
    )


def _summarize(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def detect_layout(keys: Iterable[str]) -> Layout | None:
    """The layout of a state dict, from its key names.

    Rules, checked in this order (see docs/weights.md):
    every key under `model.` -> litedense; `features.0.0.weight` with `features.1.conv.*` -> torchvision
    MobileNetV2, with `features.1.block.*` -> torchvision MobileNetV3, with `features.1.0.block.*` ->
    torchvision EfficientNet, or EfficientNetV2 when that first block has no `block.1` (a FusedMBConv
    without expansion: one conv; EfficientNet's first block is depthwise, SE, project);
    `_conv_stem.weight` and `_blocks.0.*` -> lukemelas; `conv_stem.weight` (or
    timm's Xception stems `conv1.weight` + `block1.*`, `stem.conv1.weight`) -> timm; `conv1.0.weight` with
    `stage2.*` -> torchvision ShuffleNetV2; `first_conv.0.weight` -> ShuffleNetV1; `first_layer.0.weight`
    -> SkipblockNet; `conv1.weight` with `layer1.*` -> ResNet (torchvision's keys, which timm's share).

    Args:
        keys: The state dict's keys (wrappers and DataParallel prefixes already removed).

    Returns:
        The layout, or None when no rule matches.
    """
    keys = list(keys)
    present = set(keys)

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if keys and all(k.startswith("model.") for k in keys):
        return LAYOUTS["litedense"]
    if "features.0.0.weight" in present:
        if has_prefix("features.1.conv."):
            return LAYOUTS["torchvision-mobilenet_v2"]
        if has_prefix("features.1.block."):
            return LAYOUTS["torchvision-mobilenet_v3"]
        if has_prefix("features.1.0.block."):
            if has_prefix("features.1.0.block.1."):
                return LAYOUTS["torchvision-efficientnet"]
            return LAYOUTS["torchvision-efficientnet_v2"]
    if "_conv_stem.weight" in present and has_prefix("_blocks.0."):
        return LAYOUTS["lukemelas-efficientnet"]
    if "conv_stem.weight" in present or "stem.conv1.weight" in present:
        return LAYOUTS["timm"]
    if "conv1.weight" in present and has_prefix("block1."):
        return LAYOUTS["timm"]  # timm's legacy Xception
    if "conv1.0.weight" in present and has_prefix("stage2."):
        return LAYOUTS["torchvision-shufflenet_v2"]
    if "first_conv.0.weight" in present:
        return LAYOUTS["official-shufflenet_v1"]
    if "first_layer.0.weight" in present:
        return LAYOUTS["official-skipblocknet"]
    if "conv1.weight" in present and has_prefix("layer1."):
        return LAYOUTS["torchvision-resnet"]
    return None


def _index_units(state_dict: Mapping[str, Tensor], pattern: str) -> dict[int, dict[str, Tensor]]:
    """Group keys `<prefix><N>.<rest>` by N (an int), ordered: N -> {rest: tensor}."""
    units: dict[int, dict[str, Tensor]] = {}
    regex = re.compile(pattern)
    for key, value in state_dict.items():
        match = regex.fullmatch(key)
        if match:
            units.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return dict(sorted(units.items()))


def _stage_positions(stage_sizes: Iterable[int]) -> list[str]:
    """The timm block prefixes in order: `blocks.0.0`, `blocks.1.0`, `blocks.1.1`, ..."""
    return [f"blocks.{s}.{j}" for s, size in enumerate(stage_sizes) for j in range(size)]


def _block_from_modules(modules: list[tuple[str, dict[str, Tensor]]], where: str) -> dict[str, Tensor]:
    """The timm keys of one inverted-residual block from its (kind, tensors) parts, in forward order.

    `kind` is "conv" (a conv weight with its BatchNorm, tensors prefixed "conv."/"bn.") or "se" (a
    squeeze-excitation with "reduce."/"expand." tensors). Three convs are expand, depthwise, project
    (timm's InvertedResidual: conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3); two are depthwise, project (timm's
    DepthwiseSeparableConv: conv_dw/bn1, conv_pw/bn2).
    """
    convs = [tensors for kind, tensors in modules if kind == "conv"]
    if len(convs) == 3:
        names = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))
    elif len(convs) == 2:
        names = (("conv_dw", "bn1"), ("conv_pw", "bn2"))
    else:
        raise ValueError(f"{where}: a block of {len(convs)} convolutions matches no timm block")
    out: dict[str, Tensor] = {}
    conv_iter = iter(names)
    for kind, tensors in modules:
        if kind == "se":
            for rest, value in tensors.items():
                part, _, param = rest.partition(".")
                out[f"se.conv_{part}.{param}"] = value
            continue
        conv_name, bn_name = next(conv_iter)
        for rest, value in tensors.items():
            part, _, param = rest.partition(".")
            out[f"{conv_name if part == 'conv' else bn_name}.{param}"] = value
    return out


def _torchvision_block(tensors: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """The timm keys of a torchvision MobileNetV3 / EfficientNet block (`block.K.0` conv, `.1` BN, `.fcN` SE)."""
    parts: dict[int, dict[str, Tensor]] = {}
    for rest, value in tensors.items():
        match = re.fullmatch(r"block\.(\d+)\.(.+)", rest)
        if not match:
            raise ValueError(f"{where}: unexpected key {rest!r} in a torchvision block")
        parts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    modules: list[tuple[str, dict[str, Tensor]]] = []
    for _, sub in sorted(parts.items()):
        if any(k.startswith("fc1.") for k in sub):  # SqueezeExcitation: fc1 reduces, fc2 expands
            modules.append(("se", {k.replace("fc1.", "reduce.").replace("fc2.", "expand."): v for k, v in sub.items()}))
        else:  # Conv2dNormActivation: 0 the conv, 1 the BatchNorm
            modules.append(("conv", {("conv." if k.startswith("0.") else "bn.") + k[2:]: v for k, v in sub.items()}))
    return _block_from_modules(modules, where)


def _conv_bn(tensors: Mapping[str, Tensor], conv: str, bn: str) -> dict[str, Tensor]:
    """`0.*` -> `<conv>.*`, `1.*` -> `<bn>.*` (a torchvision Conv2dNormActivation)."""
    return {(conv if k.startswith("0.") else bn) + k[1:]: v for k, v in tensors.items()}


def _place_blocks(blocks: list[dict[str, Tensor]], stage_sizes: Iterable[int], where: str) -> dict[str, Tensor]:
    positions = _stage_positions(stage_sizes)
    if len(positions) != len(blocks):
        raise ValueError(f"{where}: {len(blocks)} blocks do not fit timm's stages {tuple(stage_sizes)}")
    return {f"{prefix}.{k}": v for prefix, block in zip(positions, blocks) for k, v in block.items()}


def _expect_consumed(state_dict: Mapping[str, Tensor], used: set[str], where: str) -> None:
    left = [k for k in state_dict if k not in used]
    if left:
        raise ValueError(f"{where}: keys the converter does not know: {_summarize(left)}")


def convert_torchvision_mobilenet_v2(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert torchvision `mobilenet_v2()` keys to timm `mobilenetv2_*` keys (any width), classifier included.

    `features.0` is the stem, `features.1..17` the inverted residuals (the first without expansion),
    `features.18` the 1x1 head conv, `classifier.1` the Linear.
    """
    where = "torchvision MobileNetV2"
    units = _index_units(state_dict, r"features\.(\d+)\.(.+)")
    last = max(units)
    out = _conv_bn(units.pop(0), "conv_stem", "bn1") | _conv_bn(units.pop(last), "conv_head", "bn2")
    blocks = []
    for i, tensors in units.items():
        # conv.0 / conv.1 are Conv2dNormActivation (".0" conv, ".1" BN); the last conv and BN are plain modules.
        modules: list[tuple[str, dict[str, Tensor]]] = []
        parts: dict[str, dict[str, Tensor]] = {}
        for rest, value in tensors.items():
            match = re.fullmatch(r"conv\.(\d+)\.(.+)", rest)
            if not match:
                raise ValueError(f"{where}: unexpected key features.{i}.{rest}")
            parts.setdefault(match.group(1), {})[match.group(2)] = value
        pending_conv: dict[str, Tensor] | None = None
        for _, sub in sorted(parts.items(), key=lambda item: int(item[0])):
            if "0.weight" in sub:  # Conv2dNormActivation
                modules.append(("conv", _conv_bn(sub, "conv", "bn")))
            elif "running_mean" in sub:  # the projection's BatchNorm, after its plain conv
                modules.append(("conv", (pending_conv or {}) | {f"bn.{k}": v for k, v in sub.items()}))
                pending_conv = None
            else:  # the projection conv
                pending_conv = {f"conv.{k}": v for k, v in sub.items()}
        blocks.append(_block_from_modules(modules, f"{where} features.{i}"))
    out |= _place_blocks(blocks, _TV_MOBILENET_V2_STAGES, where)
    out |= {
        k.replace("classifier.1.", "classifier."): v for k, v in state_dict.items() if k.startswith("classifier.1.")
    }
    _expect_consumed(state_dict, {k for k in state_dict if k.startswith(("features.", "classifier.1."))}, where)
    return out


def convert_torchvision_mobilenet_v3(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert torchvision `mobilenet_v3_large/small()` keys to timm `mobilenetv3_*` keys, classifier included.

    `features.0` is the stem, then the inverted residuals, then the last 1x1 conv, which timm keeps as a
    one-block stage (`blocks.<last>.0.conv`/`bn1`). torchvision's `classifier.0` Linear is timm's 1x1
    `conv_head` (same weights, reshaped to (C_out, C_in, 1, 1)); `classifier.3` is timm's `classifier`.
    """
    where = "torchvision MobileNetV3"
    units = _index_units(state_dict, r"features\.(\d+)\.(.+)")
    last = max(units)
    out = _conv_bn(units.pop(0), "conv_stem", "bn1")
    last_conv = units.pop(last)
    if len(units) not in _TV_MOBILENET_V3_STAGES:
        raise ValueError(f"{where}: {len(units)} inverted residuals is neither -Large (15) nor -Small (11)")
    blocks = [_torchvision_block(tensors, f"{where} features.{i}") for i, tensors in units.items()]
    stages = _TV_MOBILENET_V3_STAGES[len(units)]
    out |= _place_blocks(blocks, stages[:-1], where)
    out |= _conv_bn(last_conv, f"blocks.{len(stages) - 1}.0.conv", f"blocks.{len(stages) - 1}.0.bn1")
    for tv, timm_name in (("classifier.0.", "conv_head."), ("classifier.3.", "classifier.")):
        for key, value in state_dict.items():
            if key.startswith(tv):
                param = key[len(tv) :]
                out[timm_name + param] = (
                    value[:, :, None, None] if timm_name == "conv_head." and value.ndim == 2 else value
                )
    _expect_consumed(
        state_dict, {k for k in state_dict if k.startswith(("features.", "classifier.0.", "classifier.3."))}, where
    )
    return out


def _convert_torchvision_efficientnet_frame(
    state_dict: Mapping[str, Tensor],
    convert_block: Callable[[Mapping[str, Tensor], str], dict[str, Tensor]],
    where: str,
) -> dict[str, Tensor]:
    """The frame torchvision's EfficientNet and EfficientNetV2 share, with `convert_block` for each block.

    `features.0` is the stem, `features.S.J` (S = 1..) the blocks of stage S-1, the last `features.N` the 1x1
    head conv, `classifier.1` the Linear.
    """
    units = _index_units(state_dict, r"features\.(\d+)\.(.+)")
    last = max(units)
    out = _conv_bn(units.pop(0), "conv_stem", "bn1") | _conv_bn(units.pop(last), "conv_head", "bn2")
    for s, tensors in units.items():
        for j, block in _index_units(tensors, r"(\d+)\.(.+)").items():
            converted = convert_block(block, f"{where} features.{s}.{j}")
            out |= {f"blocks.{s - 1}.{j}.{k}": v for k, v in converted.items()}
    out |= {
        k.replace("classifier.1.", "classifier."): v for k, v in state_dict.items() if k.startswith("classifier.1.")
    }
    _expect_consumed(state_dict, {k for k in state_dict if k.startswith(("features.", "classifier.1."))}, where)
    return out


def convert_torchvision_efficientnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert torchvision `efficientnet_b0..b7()` keys to timm `efficientnet_b*` keys, classifier included.

    `features.0` is the stem, `features.S.J` (S = 1..7) the MBConv blocks of stage S-1, the last
    `features.N` the 1x1 head conv, `classifier.1` the Linear. torchvision's stages are timm's.
    """
    return _convert_torchvision_efficientnet_frame(state_dict, _torchvision_block, "torchvision EfficientNet")


def _torchvision_v2_block(tensors: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """The timm keys of a torchvision EfficientNetV2 block: FusedMBConv (one or two convs) or MBConv.

    A FusedMBConv without expansion is one 3x3 conv (timm's `ConvBnAct`: `conv`, `bn1`); with expansion a
    strided 3x3 conv that expands and a 1x1 projection (timm's `EdgeResidual`: `conv_exp`/`bn1`,
    `conv_pwl`/`bn2`). An MBConv (expand, depthwise, SE, project) is timm's `InvertedResidual`.
    """
    parts: dict[int, dict[str, Tensor]] = {}
    for rest, value in tensors.items():
        match = re.fullmatch(r"block\.(\d+)\.(.+)", rest)
        if not match:
            raise ValueError(f"{where}: unexpected key {rest!r} in a torchvision block")
        parts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if any(k.startswith("fc1.") for sub in parts.values() for k in sub):
        return _torchvision_block(tensors, where)  # MBConv
    names = {1: (("conv", "bn1"),), 2: (("conv_exp", "bn1"), ("conv_pwl", "bn2"))}.get(len(parts))
    if names is None:
        raise ValueError(f"{where}: a FusedMBConv of {len(parts)} convolutions matches no timm block")
    out: dict[str, Tensor] = {}
    for (conv, bn), (_, sub) in zip(names, sorted(parts.items())):
        out |= _conv_bn(sub, conv, bn)
    return out


def convert_torchvision_efficientnet_v2(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert torchvision `efficientnet_v2_s/m/l()` keys to timm `efficientnetv2_*` keys, classifier included.

    The same frame as EfficientNet (`features.0` stem, `features.S.J` the blocks of stage S-1, the last
    `features.N` the 1x1 head conv, `classifier.1` the Linear); the FusedMBConv stages map to timm's
    `ConvBnAct` / `EdgeResidual` blocks (`_torchvision_v2_block`).
    """
    return _convert_torchvision_efficientnet_frame(state_dict, _torchvision_v2_block, "torchvision EfficientNetV2")


def efficientnet_stage_sizes(num_blocks: int) -> tuple[int, ...]:
    """The timm stage sizes of an EfficientNet (B0-B7, Lite) with `num_blocks` MBConv blocks in all.

    Lite keeps the first and last stage at one block whatever the depth (`fix_head_stem`); both rules
    are tried, B first (B1 and Lite1 differ in their block count, 23 vs 21).
    """
    for depth in _EFFICIENTNET_DEPTHS:
        scaled = tuple(math.ceil(depth * r) for r in _EFFICIENTNET_REPEATS)  # TF's (and lukemelas') round_repeats
        if sum(scaled) == num_blocks:
            return scaled
        lite = (1, *scaled[1:-1], 1)
        if sum(lite) == num_blocks:
            return lite
    raise ValueError(f"{num_blocks} MBConv blocks match no EfficientNet depth (B0-B7, Lite0-4)")


def convert_lukemelas_efficientnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert lukemelas EfficientNet-PyTorch keys (B0-B7, Lite) to timm `tf_efficientnet_*` keys, classifier included.

    `_conv_stem`/`_bn0` are the stem, `_blocks.N` the MBConv blocks in one flat list (`_expand_conv`/`_bn0`,
    `_depthwise_conv`/`_bn1`, `_se_reduce`/`_se_expand`, `_project_conv`/`_bn2`), split into timm's stages
    by the EfficientNet repeat rule; `_conv_head`/`_bn1` the head conv, `_fc` the Linear.
    """
    where = "lukemelas EfficientNet"
    units = _index_units(state_dict, r"_blocks\.(\d+)\.(.+)")
    blocks = []
    for n, tensors in units.items():
        expands = any(k.startswith("_expand_conv.") for k in tensors)
        renames = {"_depthwise_conv": "conv_dw", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
        if expands:
            renames |= {
                "_expand_conv": "conv_pw",
                "_bn0": "bn1",
                "_bn1": "bn2",
                "_project_conv": "conv_pwl",
                "_bn2": "bn3",
            }
        else:
            renames |= {"_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
        block = {}
        for rest, value in tensors.items():
            module, _, param = rest.partition(".")
            if module not in renames:
                raise ValueError(f"{where}: unexpected key _blocks.{n}.{rest}")
            block[f"{renames[module]}.{param}"] = value
        blocks.append(block)
    out = _place_blocks(blocks, efficientnet_stage_sizes(len(blocks)), where)
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    used = {k for k in state_dict if k.startswith("_blocks.")}
    for key, value in state_dict.items():
        module, _, param = key.partition(".")
        if module in top:
            out[f"{top[module]}.{param}"] = value
            used.add(key)
    _expect_consumed(state_dict, used, where)
    return out


def strip_litedense_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Turn a litedense `Backbone.state_dict()` (wrapped model under `model.`) into the wrapped model's keys."""
    return {k[len("model.") :]: v for k, v in state_dict.items()}


_CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "torchvision-mobilenet_v2": convert_torchvision_mobilenet_v2,
    "torchvision-mobilenet_v3": convert_torchvision_mobilenet_v3,
    "torchvision-efficientnet": convert_torchvision_efficientnet,
    "torchvision-efficientnet_v2": convert_torchvision_efficientnet_v2,
    "lukemelas-efficientnet": convert_lukemelas_efficientnet,
}


@dataclass(frozen=True)
class Converted:
    """A state dict converted to the layout litedense loads, and what it came from.

    Attributes:
        state_dict: Keys in the target layout (timm's for the nets we wrap), classifier included.
        layouts: The layouts recognised, outermost first, e.g. ("litedense", "timm").
        layout: The innermost source layout (whose `bn_eps` / `padding` apply); None when unrecognised.
        original_keys: Converted key -> the key as stored (for messages; reshaped tensors keep the new key).
    """

    state_dict: dict[str, Tensor]
    layouts: tuple[str, ...]
    layout: Layout | None
    original_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)


def unknown_layout_message(state_dict: Mapping[str, Tensor], source: str) -> str:
    """The message for a state dict no layout matches: some of its keys, and the layouts accepted."""
    return (
        f"{source}: the checkpoint's layout is none litedense recognises (first keys: {_summarize(state_dict)}). "
        f"Accepted layouts:\n{accepted_layouts()}\nA checkpoint of another architecture cannot be loaded."
    )


def convert_state_dict(state_dict: Mapping[str, Tensor], source: str, *, strict: bool = True) -> Converted:
    """Detect the layout of a state dict and convert it to the layout litedense's nets load.

    Args:
        state_dict: Unwrapped state dict (see `read_state_dict`).
        source: Where it came from (a path), for messages.
        strict: Raise for an unrecognised layout (True), or return it unchanged with `layout=None` (False:
            `load_checked` then names the keys that do not fit, and lists the accepted layouts).

    Returns:
        The converted state dict with the layouts seen.

    Raises:
        UnknownLayoutError: No layout matches; the message lists the accepted layouts and some keys.
        ValueError: The keys match a layout but not its structure (the message names the keys).
    """
    seen: list[str] = []
    current = dict(state_dict)
    # Renaming keeps the tensor objects, so each converted key finds its stored name by identity.
    stored_name = {id(v): k for k, v in state_dict.items()}

    def done(layout: Layout | None) -> Converted:
        original = {k: stored_name.get(id(v), k) for k, v in current.items()}
        return Converted(current, tuple(seen), layout, original)

    while True:
        layout = detect_layout(current)
        if layout is None:
            if strict:
                raise UnknownLayoutError(unknown_layout_message(current, source))
            return done(None)
        seen.append(layout.name)
        if layout.name == "litedense":
            current = strip_litedense_prefix(current)
            continue
        if layout.name in _CONVERTERS:
            try:
                current = _CONVERTERS[layout.name](current)
            except ValueError as err:
                raise ValueError(f"{source} looks like a {layout.description} checkpoint, but: {err}") from err
        return done(layout)


# Checkpoint keys after a backbone's last feature level (classifier heads), left out when identifying a net.
_HEAD_KEYS = ("classifier.*", "conv_head.*", "bn2.*", "norm_head.*", "fc.*", "head.*", "global_pool.*")


def _variant_options(name: str) -> list[dict[str, object]]:
    """Family options of the default net and of every registered variant (widths, groups, reduced tail).

    The width and group options are spelt out for the default too, so messages say which width a file is for.
    """
    from backbones._registry import get_backbone_entry

    entry = get_backbone_entry(name)
    defaults = getattr(entry, "family_defaults", {})
    shown = {k: defaults[k] for k in ("groups", "width_mult") if k in defaults}
    return [{**shown, **variant} for variant in ({}, *getattr(entry, "variants", ()))]


Shapes = frozenset[tuple[str, tuple[int, ...]]]


def _body(items: Iterable[tuple[str, tuple[int, ...]]]) -> Shapes:
    """(key, shape) pairs less BatchNorm counters and classifier-head keys."""
    import fnmatch

    return frozenset(
        (k, shape)
        for k, shape in items
        if not k.endswith("num_batches_tracked") and not any(fnmatch.fnmatchcase(k, p) for p in _HEAD_KEYS)
    )


@functools.cache
def _template(name: str, options: tuple[tuple[str, object], ...]) -> Shapes | None:
    """The body (key, shape) pairs of one registered backbone variant in its loading layout, or None.

    Built on the meta device (no memory, no initialisation cost) and cached: only error messages and the
    convert command need it.
    """
    import torch

    from backbones._registry import create_backbone

    try:
        with torch.device("meta"):
            backbone = create_backbone(name, **dict(options))
    except Exception:  # noqa: BLE001  (a variant that cannot be built is simply not a candidate)
        return None
    state = backbone.state_dict()
    if all(k.startswith("model.") for k in state):
        state = strip_litedense_prefix(state)
    return _body((k, tuple(v.shape)) for k, v in state.items())


def identify_architecture(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Which registered backbones (and widths) a converted state dict holds the weights of.

    A net matches when the checkpoint's keys, less its classifier head, are exactly the backbone's keys
    with the same shapes. Only families whose default net shares most key names with the file are built
    at their other variants; options that leave every shape alike (EfficientNet's padding) are not told apart.

    Args:
        state_dict: Keys in the layout litedense loads (see `convert_state_dict`).

    Returns:
        Descriptions such as "mobilenet_v2 (width_mult=1.4)"; empty when none matches.
    """
    from backbones._registry import list_backbones

    shapes = _body((k, tuple(v.shape)) for k, v in state_dict.items())
    keys = {k for k, _ in shapes}
    matches = []
    for name in list_backbones():
        variants = _variant_options(name)
        default = _template(name, tuple(variants[0].items()))
        if default is None or len(keys & {k for k, _ in default}) < 0.5 * max(len(keys), len(default)):
            continue  # another family: its variants share even fewer keys
        for options in variants:
            if _template(name, tuple(options.items())) == shapes:
                described = ", ".join(f"{k}={v}" for k, v in options.items())
                matches.append(f"{name} ({described})" if described else name)
    return matches
