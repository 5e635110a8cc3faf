"""Base class every registered backbone derives from, and the checks they share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from backbones._features import FeatureInfo
from backbones._scriptable import not_scriptable

SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)
FEATURE_LOCATIONS = ("stage", "expansion")


def resolve_out_indices(out_indices: Sequence[int] | None, num_levels: int, name: str) -> tuple[int, ...]:
    """Turn a user's `out_indices` into sorted, validated, non-negative positions.

    Args:
        out_indices: Positions into the backbone's full list of taps (negative counts from the end),
            or None for all of them.
        num_levels: How many taps the backbone has.
        name: The backbone's registered name, for the error message.

    Returns:
        Positions, ascending and unique.

    Raises:
        ValueError: An index is out of range, repeated, or the list is empty.
    """
    if out_indices is None:
        return tuple(range(num_levels))
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    indices = []
    for i in out_indices:
        if not -num_levels <= int(i) < num_levels:
            raise ValueError(
                f"out_indices {tuple(out_indices)} out of range for '{name}': it has {num_levels} feature "
                f"levels, so indices must lie in [0, {num_levels - 1}] (or [-{num_levels}, -1])"
            )
        indices.append(int(i) % num_levels)
    if not indices:
        raise ValueError(f"out_indices for '{name}' is empty; pass None for all {num_levels} levels")
    if len(set(indices)) != len(indices):
        raise ValueError(f"out_indices {tuple(out_indices)} for '{name}' repeats a level")
    return tuple(sorted(indices))


def reject_expansion(name: str, feature_location: str, *, missing: str, why: str) -> None:
    """Refuse `feature_location="expansion"` for a net that has no expansion layers.

    Args:
        name: The backbone's registered name.
        feature_location: What was asked for.
        missing: What the net lacks, e.g. "expansion layers".
        why: What its blocks are instead, for the message.

    Raises:
        ValueError: `feature_location` is not "stage".
    """
    if feature_location != "stage":
        raise ValueError(
            f"{name} has no {missing} ({why}), so feature_location='{feature_location}' does not exist for it; "
            f"use feature_location='stage'"
        )


class Backbone(nn.Module):
    """A network seen as a multi-scale feature extractor.

    Subclasses set `feature_info` (of the maps they return, after `out_indices`), `in_chans` and
    `name`, and implement `forward_features`. `forward` checks the input, so every backbone rejects
    a wrong channel count with the same message.

    Attributes:
        name: Registered name, e.g. "mobilenet_v2".
        feature_info: Channels and strides of the returned maps.
        in_chans: Channels the first convolution expects.
        output_stride: Largest stride of any returned map's network (8, 16 or 32).
    """

    name: str
    feature_info: FeatureInfo
    in_chans: int
    output_stride: int
    # Whether `torch.jit.script` compiles it (through `__prepare_scriptable__`); see backbones._scriptable.
    scriptable: bool = False

    def __prepare_scriptable__(self) -> nn.Module:
        """What `torch.jit.script` compiles in this module's place; here a clear refusal.

        Raises:
            RuntimeError: This backbone is not TorchScript-scriptable.
        """
        raise not_scriptable(f"backbone '{self.name}'")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Compute the selected feature maps; see `forward`."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        """Extract the feature maps.

        Args:
            x: Images, (N, in_chans, H, W), any H and W.

        Returns:
            One map per `feature_info` entry i, each (N, channels[i], ceil(H / strides[i]), ceil(W / strides[i])).
        """
        if x.ndim != 4:
            raise ValueError(f"{self.name} expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans and not torch.jit.is_tracing():
            raise ValueError(
                f"{self.name} was built for {self.in_chans}-channel input but got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); create it with in_chans={x.shape[1]}"
            )
        return self.forward_features(x)
