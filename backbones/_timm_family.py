"""The builder every timm-wrapped family shares: timm builds and dilates the net, we own the contract.

`build_timm_backbone` is what the MobileNet, EfficientNet and PP-LCNet builders call: it builds the timm
model (from the hub, a timm generator, or our own definition) and returns it as a `TimmBackbone` (block
outputs, timm's `features_only`) or an `ExpansionTimmBackbone` (SSDLite's expansion taps,
`backbones._expansion_taps`). GhostNet and Xception, which add their own taps to timm's classifier, use
`create_timm_model` alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import timm
from torch import Tensor, nn

from backbones._base import Backbone, reject_expansion, resolve_out_indices
from backbones._expansion_taps import ExpansionTimmBackbone
from backbones._features import FeatureInfo
from backbones._registry import Pretrained
from backbones._scriptable import ScriptableTimmBackbone
from backbones._weights import download_error, load_checked, read_state_dict

# Classifier and pre-logits keys of timm checkpoints that a feature extractor drops.
TIMM_CLASSIFIER_KEYS = ("classifier.*", "conv_head.*", "bn2.*", "fc.*", "head.*", "global_pool.*", "norm_head.*")


def create_timm_model(
    timm_name: str,
    *,
    architecture: str,
    pretrained: bool | str | os.PathLike,
    pretrained_available: bool = True,
    create_fn: Callable[..., nn.Module] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a timm model, with its ImageNet weights from the hub when `pretrained is True`.

    A local file (`pretrained` a path) is not loaded here: the caller loads it with
    `backbones._weights.load_checked` once the model has the layout the file is checked against.

    Args:
        timm_name: timm variant; its default pretrained tag chooses the hub weights.
        architecture: Human description for messages, e.g. "ghostnet (width_mult=1.0)".
        pretrained: False, True (timm's hub), or a path (loaded by the caller).
        pretrained_available: Whether the hub has weights for this variant.
        create_fn: Builds the model instead of `timm.create_model(timm_name, ...)` (widths timm does not
            register); called with the same keyword arguments.
        **kwargs: Passed to timm (features_only, output_stride, in_chans, ...).

    Returns:
        The timm model.

    Raises:
        ValueError: Hub weights asked for a variant that has none.
        RuntimeError: The weights could not be fetched (offline); the message says how to pass a file.
    """
    from_hub = pretrained is True
    if from_hub and not pretrained_available:
        raise ValueError(
            f"no ImageNet weights are published for {architecture}; use pretrained=False or pass a local file "
            f"as pretrained='/path/to/weights.pth'"
        )
    try:
        if create_fn is not None:
            return create_fn(pretrained=from_hub, **kwargs)
        return timm.create_model(timm_name, pretrained=from_hub, **kwargs)
    except (OSError, ConnectionError, RuntimeError) as err:
        if not from_hub:
            raise
        cfg = timm.models.get_pretrained_cfg(timm_name)
        if cfg is not None and cfg.hf_hub_id:
            source = f"the Hugging Face Hub ({cfg.hf_hub_id}, via timm)"
        else:
            source = cfg.url if cfg is not None and cfg.url else f"timm '{timm_name}'"
        raise download_error(architecture, source, err) from err


class TimmBackbone(Backbone):
    """A timm `features_only` network behind the Backbone contract.

    The timm model is always built with all its levels, so a checkpoint in timm's layout loads
    whatever `out_indices` asks for; `out_indices` only selects what `forward` returns.

    Args:
        name: Our registered name.
        architecture: Human description for messages, e.g. "mobilenet_v2 (width_mult=0.5)".
        timm_name: timm model name (its pretrained tag chooses the hub weights).
        pretrained: False, True (timm's hub), or a local file in timm's layout.
        output_stride: 8, 16 or 32 (timm dilates).
        out_indices: Levels to return, None for all.
        in_chans: Input channels.
        pretrained_available: Whether hub weights exist for this variant.
        timm_kwargs: Extra arguments to `timm.create_model` (e.g. channel_multiplier).
        create_fn: Builds the timm model instead of `timm.create_model(timm_name, ...)` (for widths timm
            does not register); called with the same keyword arguments.
        classifier_keys: fnmatch patterns of checkpoint keys to ignore.
        stem_keys: Model keys of the first convolution's weight (adapted when in_chans != 3).
    """

    def __init__(
        self,
        *,
        name: str,
        architecture: str,
        timm_name: str,
        pretrained: bool | str | os.PathLike,
        output_stride: int,
        out_indices: Sequence[int] | None,
        in_chans: int,
        pretrained_available: bool = True,
        timm_kwargs: dict | None = None,
        create_fn: Callable[..., nn.Module] | None = None,
        classifier_keys: Sequence[str] = TIMM_CLASSIFIER_KEYS,
        stem_keys: Sequence[str] = ("conv_stem.weight",),
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.output_stride = name, in_chans, output_stride
        kwargs = dict(features_only=True, output_stride=output_stride, in_chans=in_chans, **(timm_kwargs or {}))
        self.model = create_timm_model(
            timm_name,
            architecture=architecture,
            pretrained=pretrained,
            pretrained_available=pretrained_available,
            create_fn=create_fn,
            **kwargs,
        )
        if pretrained not in (False, True, None):
            load_checked(
                self.model,
                read_state_dict(pretrained),
                source=str(pretrained),
                architecture=f"{architecture} (timm '{timm_name}' layout)",
                ignore=classifier_keys,
                in_chans=in_chans,
                stem_keys=stem_keys,
            )
        info = self.model.feature_info
        all_info = FeatureInfo(tuple(info.channels()), tuple(info.reduction()))
        self.out_indices = resolve_out_indices(out_indices, len(all_info), name)
        self.feature_info = all_info.select(self.out_indices)

    scriptable = True  # timm's features networks script; ScriptableTimmBackbone runs this forward

    def __prepare_scriptable__(self) -> ScriptableTimmBackbone:
        """The same network and forward in TorchScript's subset of Python (what `torch.jit.script` compiles)."""
        return ScriptableTimmBackbone(self.model, list(self.out_indices), self.in_chans, self.name, self.output_stride)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> selected maps, see `Backbone.forward`."""
        features = self.model(x)
        return [features[i] for i in self.out_indices]


def resolve_width(name: str, width_mult: float, table: Mapping[float, str]) -> str:
    """The timm variant of a width multiplier, or a ValueError listing the supported widths.

    Args:
        name: Our registered name, for the message.
        width_mult: The requested width.
        table: Supported width -> timm variant name.

    Returns:
        The timm variant name.
    """
    if width_mult not in table:
        raise ValueError(f"{name} width_mult {width_mult!r} is not supported; choose one of {sorted(table)}")
    return table[width_mult]


def hub_weights_exist(timm_name: str) -> bool:
    """Whether timm lists ImageNet weights for a variant (e.g. mobilenetv2_035 has none)."""
    return bool(timm.list_pretrained(f"{timm_name}.*"))


def build_timm_backbone(
    *,
    name: str,
    architecture: str,
    timm_name: str,
    pretrained: Pretrained,
    output_stride: int,
    out_indices: Sequence[int] | None,
    feature_location: str,
    in_chans: int,
    create_fn: Callable[..., nn.Module] | None = None,
    has_expansions: bool = True,
    mobilenetv3: bool | None = None,
) -> Backbone:
    """Build a timm-wrapped net at either feature location.

    Args:
        name: Our registered name.
        architecture: Human description for messages, e.g. "mobilenet_v2 (width_mult=0.5)".
        timm_name: timm variant; hub weights are those of its default pretrained tag.
        pretrained: False, True (timm's hub) or a local file in timm's layout.
        output_stride: 8, 16 or 32.
        out_indices: Levels to return, None for all.
        feature_location: "stage" (block outputs, timm's features_only) or "expansion" (SSDLite taps).
        in_chans: Input channels.
        create_fn: Builds a width timm does not register (then no hub weights exist); called like
            `timm.create_model` without the name.
        has_expansions: False for nets of depthwise-separable blocks only (MobileNetV1, PP-LCNet).
        mobilenetv3: Whether `create_fn` builds a timm MobileNetV3 (None: inferred from `timm_name`, and
            False when `create_fn` is given).

    Returns:
        The backbone.

    Raises:
        ValueError: "expansion" asked of a net without expansion layers.
    """
    if not has_expansions:
        reject_expansion(
            name,
            feature_location,
            missing="expansion layers",
            why="its blocks are depthwise-separable convolutions without an expanding 1x1 conv",
        )
    common = dict(
        name=name,
        architecture=architecture,
        timm_name=timm_name,
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        in_chans=in_chans,
    )
    pretrained_available = create_fn is None and hub_weights_exist(timm_name)
    if feature_location != "expansion":
        return TimmBackbone(**common, pretrained_available=pretrained_available, create_fn=create_fn)
    # timm's MobileNetV3 classifier cannot dilate and its conv_head follows the pooling (the taps drop it),
    # so it is built as timm's features model; EfficientNet-style nets keep their classifier's conv_head.
    is_mnv3 = mobilenetv3
    if is_mnv3 is None:
        is_mnv3 = create_fn is None and timm.models.model_entrypoint(timm_name).__module__.endswith("mobilenetv3")
    kwargs = dict(features_only=True) if is_mnv3 else dict(num_classes=0)
    model = create_timm_model(
        timm_name,
        architecture=architecture,
        pretrained=pretrained,
        pretrained_available=pretrained_available,
        create_fn=create_fn,
        output_stride=output_stride,
        in_chans=in_chans,
        **kwargs,
    )
    return ExpansionTimmBackbone(**common, model=model, mobilenetv3=is_mnv3)
