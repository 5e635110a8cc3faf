"""Registry of backbone builders: `register_backbone`, `create_backbone`, `list_backbones`."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backbones._base import FEATURE_LOCATIONS, SUPPORTED_OUTPUT_STRIDES, Backbone

# Arguments every builder takes; everything else a builder declares is a family option.
COMMON_ARGS = ("pretrained", "output_stride", "out_indices", "feature_location", "in_chans")

Pretrained = bool | str | os.PathLike


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about one name.

    Attributes:
        name: The registered name.
        builder: Keyword-only callable returning a Backbone.
        paper: Citation of the architecture's paper.
        family_options: Names of the builder's family keyword arguments (e.g. width_mult, groups).
        family_defaults: Default value of each family option.
        variants: Supported non-default settings of the family options, each a dict of the options it
            changes (e.g. `{"width_mult": 0.5}`); the drop-in registers each as a named smp encoder.
        channels_last: Whether the net trains faster in channels-last (NHWC) memory format than in the
            default NCHW on CPU (oneDNN), as measured by `benchmarks/memory_format.py`; the tasks' default
            memory format follows it (`TaskModule(channels_last=None)`).
    """

    name: str
    builder: Callable[..., Backbone]
    paper: str
    family_options: tuple[str, ...]
    family_defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    variants: tuple[dict[str, Any], ...] = field(default=(), hash=False, compare=False)
    channels_last: bool = True


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, paper: str, variants: Sequence[Mapping[str, Any]] = (), channels_last: bool = True
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator that registers a builder under `name`.

    The builder takes keyword-only arguments: the common ones (`pretrained`, `output_stride`,
    `out_indices`, `feature_location`, `in_chans`) and its family options, each with a default.

    Args:
        name: Registered name; registering a name twice is an error.
        paper: The architecture's paper, cited in docs and the backbone table.
        variants: The supported non-default settings of the family options (each a mapping of the
            options it changes), e.g. `[{"width_mult": 0.5}, {"width_mult": 1.4}]`.
        channels_last: False for a net whose training step is slower in channels-last memory format
            (`benchmarks/memory_format.py`); see `BackboneEntry.channels_last`.

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is already registered (by {_REGISTRY[name].builder.__module__})")
        params = inspect.signature(builder).parameters
        missing = [a for a in COMMON_ARGS if a not in params]
        if missing:
            raise TypeError(f"builder for '{name}' lacks the common arguments {missing}")
        options = tuple(p for p in params if p not in COMMON_ARGS and params[p].kind is inspect.Parameter.KEYWORD_ONLY)
        defaults = {p: params[p].default for p in options}
        checked = []
        for variant in variants:
            unknown = [k for k in variant if k not in options]
            if unknown or not variant or all(defaults[k] == v for k, v in variant.items()):
                raise ValueError(
                    f"variant {dict(variant)} of '{name}' must change at least one of its family options {options}"
                )
            checked.append(dict(variant))
        _REGISTRY[name] = BackboneEntry(name, builder, paper, options, defaults, tuple(checked), channels_last)
        return builder

    return decorator


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted.

    Args:
        pattern: fnmatch pattern, e.g. "mobilenet*".

    Returns:
        The matching names.
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of a name, or a ValueError that suggests the closest names."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown backbone '{name}'{hint} Available: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def create_backbone(
    name: str,
    *,
    pretrained: Pretrained = False,
    output_stride: int = 32,
    out_indices: Sequence[int] | None = None,
    feature_location: str = "stage",
    in_chans: int = 3,
    **family_kwargs,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: Registered name (see `list_backbones()`).
        pretrained: False for random weights, True for the original ImageNet weights (needs the
            network), or a path to a local `.pth` / `.safetensors` file in the layout of the
            implementation the net reproduces.
        output_stride: 32, 16 or 8; deeper strides are replaced by dilation.
        out_indices: Which feature levels to return (None for all).
        feature_location: "stage" (block outputs) or "expansion" (expanded activations of
            inverted-residual nets, as SSDLite taps them).
        in_chans: Input channels (1 for grayscale, 4 for RGB-D, ...).
        **family_kwargs: Family options, e.g. width_mult, groups.

    Returns:
        The backbone; `backbone.feature_info` describes what `backbone(images)` returns.

    Raises:
        ValueError: Unknown name, unsupported output stride, feature location or option.
    """
    entry = get_backbone_entry(name)
    if output_stride not in SUPPORTED_OUTPUT_STRIDES:
        raise ValueError(
            f"unsupported output_stride {output_stride} for '{name}'; choose one of {SUPPORTED_OUTPUT_STRIDES}"
        )
    if feature_location not in FEATURE_LOCATIONS:
        raise ValueError(
            f"unknown feature_location '{feature_location}' for '{name}'; choose one of {FEATURE_LOCATIONS}"
        )
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    unknown = [k for k in family_kwargs if k not in entry.family_options]
    if unknown:
        accepted = ", ".join(entry.family_options) or "none"
        raise ValueError(f"'{name}' does not take the option(s) {unknown}; its family options are: {accepted}")
    return entry.builder(
        pretrained=pretrained,
        output_stride=output_stride,
        out_indices=out_indices,
        feature_location=feature_location,
        in_chans=in_chans,
        **family_kwargs,
    )
