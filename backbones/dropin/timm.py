"""Every registered backbone as a timm model named `lw_<name>` (registered by `import backbones.dropin`).

>>> import backbones.dropin, timm
>>> model = timm.create_model("lw_mobilenet_v2", features_only=True, output_stride=16, out_indices=(1, 2, 3, 4))
>>> model.feature_info.channels(), model.feature_info.reduction()  # timm's FeatureInfo

timm models expose one level per stride (2, 4, 8, 16, 32): the *canonical levels* of a backbone are its
deepest tap at each stride when built at output stride 32. A timm `out_indices` counts canonical levels,
the way it does for timm's own CNNs, so smp's `tu-lw_<name>` (which asks for indices `range(depth)`)
gets strides 2, 4, ... even for a backbone that taps several maps at one stride.

The model is our Backbone with timm's feature-extractor surface on top (`feature_info`,
`forward_intermediates`, `pretrained_cfg`); it does not go through timm's `build_model_with_cfg`
because our backbones already are feature extractors and dilate themselves (timm refuses dilation
for GhostNet and the original Xception; ours does not). Family options are keyword arguments of
`timm.create_model`, and so of smp's `tu-lw_<name>` encoders, which forward their keyword arguments to timm.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import timm
import torch
from timm.models import register_model
from torch import Tensor, nn

from backbones._base import resolve_out_indices
from backbones._features import FeatureInfo
from backbones._registry import create_backbone, get_backbone_entry, list_backbones
from backbones._scriptable import not_scriptable
from backbones._timm_internals import TimmFeatureInfo, feature_take_indices

TIMM_PREFIX = "lw_"
# timm's default ImageNet normalization; our families that use another one document it in their module.
_PRETRAINED_CFG = dict(
    input_size=(3, 224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    fixed_input_size=False,
)
# Arguments timm.create_model always hands an entrypoint; they describe hub weights, which ours do not use.
_TIMM_HUB_ARGS = ("pretrained_cfg", "cache_dir")


def _family_key(family_kwargs: dict) -> tuple:
    return tuple(sorted(family_kwargs.items()))


@functools.lru_cache(maxsize=256)
def _natural_info(name: str, family_key: tuple) -> FeatureInfo:
    # Built on the meta device: only the layout is needed, not the weights, and xception65 is large.
    try:
        with torch.device("meta"):
            probe = create_backbone(name, output_stride=32, **dict(family_key))
    except (RuntimeError, NotImplementedError, TypeError):
        probe = create_backbone(name, output_stride=32, **dict(family_key))
    return probe.feature_info


def canonical_levels(name: str, **family_kwargs) -> tuple[tuple[int, ...], FeatureInfo]:
    """The canonical levels of a backbone: its deepest tap at each stride, at output stride 32.

    Args:
        name: Registered backbone name.
        **family_kwargs: Family options (they can change the channels).

    Returns:
        The positions of the canonical levels among all the backbone's taps, and their channels and
        strides at output stride 32 (shallow to deep, strides strictly increasing).
    """
    try:
        info = _natural_info(name, _family_key(family_kwargs))
    except TypeError:  # an unhashable option value: skip the cache
        info = _natural_info.__wrapped__(name, _family_key(family_kwargs))
    last_of_stride = {s: i for i, s in enumerate(info.strides)}  # later taps overwrite: the deepest wins
    indices = tuple(sorted(last_of_stride.values()))
    return indices, info.select(indices)


def _reject_unknown_name(name: str) -> None:
    if name not in list_backbones():
        get_backbone_entry(name)  # raises with the closest names


class LiteDenseTimmModel(nn.Module):
    """A litedense backbone behind timm's model surface.

    With `features_only=True` (what timm users and smp's `tu-` encoders ask for) `forward` returns the
    maps chosen by `out_indices` and `feature_info` is timm's `FeatureInfo`. Otherwise the model has
    no classifier (`num_classes == 0`): `forward` returns the deepest map and `forward_intermediates`
    gives the levels timm-style (what smp's DPT uses).

    Args:
        name: Registered backbone name (without the `lw_` prefix).
        pretrained: False, True (the backbone's ImageNet weights) or a local weights file.
        features_only: Return a list of maps instead of the deepest map.
        out_indices: Canonical levels to return (0 is stride 2 ... 4 is stride 32); all if None.
        output_stride: 32, 16 or 8.
        in_chans: Input channels.
        **family_kwargs: Family options of the backbone (width_mult, groups, ...).
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool | str | os.PathLike = False,
        features_only: bool = False,
        out_indices: Sequence[int] | int | None = None,
        output_stride: int = 32,
        in_chans: int = 3,
        **family_kwargs,
    ) -> None:
        super().__init__()
        _reject_unknown_name(name)
        levels, natural = canonical_levels(name, **family_kwargs)
        timm_name = TIMM_PREFIX + name
        if features_only:
            if isinstance(out_indices, int) and not isinstance(out_indices, bool):
                # timm's convention: an int n means the last n levels.
                if not 0 < out_indices <= len(levels):
                    raise ValueError(f"out_indices={out_indices} (last n levels) must lie in [1, {len(levels)}]")
                out_indices = tuple(range(len(levels) - out_indices, len(levels)))
            self.out_indices = resolve_out_indices(out_indices, len(levels), timm_name)
        else:
            if out_indices is not None:
                raise ValueError(f"out_indices needs features_only=True in timm.create_model('{timm_name}', ...)")
            self.out_indices = tuple(range(len(levels)))
        self.name, self.features_only, self.output_stride = timm_name, features_only, output_stride
        self.backbone = create_backbone(
            name,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=[levels[i] for i in self.out_indices],
            in_chans=in_chans,
            **family_kwargs,
        )
        # Running stride is capped by dilation; the channels do not change.
        reductions = [min(s, output_stride) for s in natural.strides]
        expected = natural.select(self.out_indices)
        got = self.backbone.feature_info
        if got.channels != expected.channels or got.strides != tuple(reductions[i] for i in self.out_indices):
            raise RuntimeError(
                f"backbone '{name}' breaks the feature contract: at output stride {output_stride} it returns "
                f"{got}, expected channels {expected.channels} at strides {[reductions[i] for i in self.out_indices]}"
            )
        self.feature_info = TimmFeatureInfo(
            # No single module produces a level (the backbone returns all from one forward).
            [dict(num_chs=c, reduction=r, module="backbone") for c, r in zip(natural.channels, reductions)],
            self.out_indices,
        )
        self.pretrained_cfg = dict(_PRETRAINED_CFG, architecture=timm_name, num_classes=0)
        self.default_cfg = self.pretrained_cfg
        self.num_classes = 0
        self.num_features = natural.channels[-1]
        self.in_chans = in_chans

    def __prepare_scriptable__(self) -> nn.Module:
        """Refuse `torch.jit.script` with the error TorchScript callers catch (its forward is Python-only).

        Raises:
            RuntimeError: Always; smp's `lw-<name>` encoders of timm-built families do script.
        """
        raise not_scriptable(f"timm model '{self.name}'")

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The canonical levels through timm's intermediate-feature API.

        Args:
            x: Images, (N, in_chans, H, W).
            indices: Last n levels if an int, all if None, else the given levels.
            norm: Unused (no final norm layer); accepted for timm compatibility.
            stop_early: Unused (the backbone computes all its levels); accepted for compatibility.
            output_fmt: Only "NCHW".
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (deepest map, intermediates).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"{self.name} only produces NCHW features, got output_fmt={output_fmt!r}")
        take, _ = feature_take_indices(len(self.out_indices), indices)
        features = self.backbone(x)  # per out_indices: (N, C_i, ceil(H / s_i), ceil(W / s_i))
        intermediates = [features[i] for i in take]
        return intermediates if intermediates_only else (features[-1], intermediates)

    def forward_features(self, x: Tensor) -> Tensor:
        """The deepest map, (N, num_features, ceil(H / output_stride), ceil(W / output_stride))."""
        return self.backbone(x)[-1]

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        """Feature maps (features_only) or the deepest map, see the class docstring."""
        if self.features_only:
            return self.backbone(x)  # one (N, C_i, ceil(H / s_i), ceil(W / s_i)) per out_index
        return self.forward_features(x)


def build_timm_model(name: str, pretrained: bool = False, **kwargs) -> LiteDenseTimmModel:
    """What `timm.create_model("lw_<name>", ...)` calls.

    Args:
        name: Registered backbone name.
        pretrained: True for the backbone's ImageNet weights. A local file goes through timm's own
            `pretrained_cfg_overlay=dict(file="weights.pth")`, in the backbone's reference layout.
        **kwargs: timm's arguments (features_only, out_indices, output_stride, in_chans) and the
            backbone's family options.

    Returns:
        The model.
    """
    for key in _TIMM_HUB_ARGS:
        kwargs.pop(key, None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    if pretrained and overlay.get("file"):
        pretrained = overlay["file"]
    return LiteDenseTimmModel(name, pretrained=pretrained, **kwargs)


def _make_entrypoint(name: str) -> Callable[..., LiteDenseTimmModel]:
    def entrypoint(pretrained: bool = False, **kwargs) -> LiteDenseTimmModel:
        return build_timm_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = TIMM_PREFIX + name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"litedense '{name}' as a timm model. {get_backbone_entry(name).paper}"
    return entrypoint


def register_timm_models() -> list[str]:
    """Register every backbone not yet in timm's registry as `lw_<name>`; safe to call again.

    Returns:
        The timm names registered by this call.
    """
    added = []
    module = sys.modules[__name__]
    for name in list_backbones():
        timm_name = TIMM_PREFIX + name
        if timm.models.is_model(timm_name):
            existing = timm.models.model_entrypoint(timm_name)
            if getattr(existing, "__module__", None) != __name__:
                warnings.warn(
                    f"timm already has a model named '{timm_name}' (from {existing.__module__}); litedense's "
                    f"'{name}' is not registered in timm",
                    stacklevel=2,
                )
            continue
        entrypoint = _make_entrypoint(name)
        setattr(module, timm_name, entrypoint)  # register_model lists it in this module's __all__
        register_model(entrypoint)
        added.append(timm_name)
    return added


__all__ = ["TIMM_PREFIX", "LiteDenseTimmModel", "build_timm_model", "canonical_levels", "register_timm_models"]
