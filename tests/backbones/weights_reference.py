"""Helpers for the checkpoint-layout tests: source models with non-trivial weights, activation matching."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine weights and the statistics of real activations, then eval().

    Freshly built nets have running_mean 0 and running_var 1, under which a BatchNorm eps of 1e-3 and
    1e-5 differ by only ~5e-4 relative and a swapped BatchNorm goes unnoticed; made-up statistics blow
    activations up to ~1e6. So the statistics are measured (a cumulative average over random images in
    train mode) after the affine weights are drawn: activations stay O(1) and every BatchNorm matters.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in norms:
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64, generator=generator))
    for module in norms:
        module.momentum = 0.1
    return model.eval()


def module_outputs(model: nn.Module, x: Tensor, run=None) -> list[Tensor]:
    """Every tensor any submodule of `model` returns on `x` (each a copy, before in-place activations)."""
    outputs: list[Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor) and output.ndim == 4:
            outputs.append(output.detach().clone())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            (run or model)(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def level_differences(levels: list[Tensor], source: list[Tensor]) -> list[float]:
    """For each of our levels, the max abs difference to the closest source activation of its shape.

    Returns inf for a level no source activation has the shape of (the levels the two do not share
    would show up as inf; every level litedense returns is one its source computes).
    """
    diffs = []
    for level in levels:
        same = [s for s in source if s.shape == level.shape]
        diffs.append(min(((s - level).abs().max().item() for s in same), default=float("inf")))
    return diffs
