"""TorchScript stand-ins for the backbones whose network timm builds (timm's feature nets script).

`torch.jit.script(module)` first calls `__prepare_scriptable__()` on every submodule and puts what it
returns in the submodule's place (in the eager module too, a torch behaviour). `TimmBackbone` returns
a `ScriptableTimmBackbone`: the same timm network (same parameters, same state-dict keys) and the same
forward, in TorchScript's subset of Python. Every other backbone refuses with a RuntimeError, the error
smp's tests expect from an encoder that declares `_is_torch_scriptable = False`.

This module has no `from __future__ import annotations`: TorchScript reads the annotations as types.
"""

import torch
from torch import Tensor, nn


class ScriptableTimmBackbone(nn.Module):
    """A `TimmBackbone`'s forward on the same timm features network, in TorchScript.

    Args:
        model: The timm `features_only` network (scriptable by timm's design).
        out_indices: Positions of the returned maps among the network's levels.
        in_chans: Channels the first convolution expects.
        name: Registered backbone name, for messages.
        output_stride: The network's output stride (8, 16 or 32).
    """

    def __init__(self, model: nn.Module, out_indices: list[int], in_chans: int, name: str, output_stride: int) -> None:
        super().__init__()
        self.model = model
        self.out_indices = list(out_indices)
        self.in_chans = in_chans
        self.name = name
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, in_chans, H, W) -> the maps of `out_indices`, each (N, C_i, ceil(H / s_i), ceil(W / s_i))."""
        if x.dim() != 4:
            raise ValueError(f"{self.name} expects a batch of images (N, C, H, W), got {x.dim()} dimensions")
        if x.size(1) != self.in_chans and not torch.jit.is_tracing():
            raise ValueError(
                f"{self.name} was built for {self.in_chans}-channel input but got {x.size(1)} channels; "
                f"create it with in_chans={x.size(1)}"
            )
        features = self.model(x)
        return [features[i] for i in self.out_indices]


def not_scriptable(what: str) -> RuntimeError:
    """The refusal of a module TorchScript cannot compile, naming what works instead."""
    return RuntimeError(
        f"{what} is not TorchScript-scriptable (only the backbones whose network timm builds are: efficientnet_*, "
        f"efficientnet_v2_*, mobilenet_v1/v2/v3_*, pp_lcnet, resnet*). Use torch.jit.trace, torch.export.export "
        f"or torch.compile instead."
    )
