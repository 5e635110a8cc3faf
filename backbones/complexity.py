"""Parameter and multiply-accumulate counts, the way the papers count them.

MACs are those of convolutions and linear layers (what MobileNet, ShuffleNet and EfficientNet papers
report as "MAdds"/"FLOPs"); batch norm, activations and additions are left out. Counted by
`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per MAC.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not), buffers excluded."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `inputs` (convolutions, matmuls).

    Args:
        module: The network; it is run once in eval mode.
        *inputs: Its inputs, e.g. a (1, 3, 224, 224) tensor.

    Returns:
        MACs (FLOPs / 2).
    """
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
