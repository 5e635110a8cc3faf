"""One generic stride-to-dilation helper: trade the deepest strides for dilation, keeping the weights.

DeepLab's rule (TF-slim `stack_blocks_dense`, timm's `first_dilation`): once the running stride reaches
the output stride, a layer that would downsample keeps stride 1 and the dilation it had so far; the
layers after it use that dilation times the stride they gave up.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def dilation_plan(stage_strides: Sequence[int], output_stride: int) -> list[tuple[int, int, int]]:
    """Stride and dilations of each stage for a given output stride.

    Args:
        stage_strides: The downsampling factor of each stage as designed (e.g. 2, 2, 2, 2, 2).
        output_stride: The largest running stride allowed.

    Returns:
        Per stage (stride, first_dilation, dilation): the stride its downsampling layer uses, the
        dilation of the layers up to and including that one, and the dilation of the layers after it.
    """
    plan = []
    current_stride, dilation = 1, 1
    for stride in stage_strides:
        first_dilation = dilation
        if current_stride * stride > output_stride:
            dilation *= stride
            stride = 1
        else:
            current_stride *= stride
        plan.append((stride, first_dilation, dilation))
    return plan


def running_strides(stage_strides: Sequence[int], output_stride: int) -> list[int]:
    """The running stride after each stage, capped at the output stride."""
    strides, current = [], 1
    for stride in stage_strides:
        current = min(current * stride, max(current, output_stride))
        strides.append(current)
    return strides


def _same_padding(kernel: tuple[int, int], dilation: int) -> tuple[int, int]:
    return tuple(dilation * (k - 1) // 2 for k in kernel)


def dilate_stage_(stage: nn.Module, first_dilation: int, dilation: int) -> None:
    """Turn a downsampling stage of an existing network into a dilated one, in place.

    Modules are visited in registration order, which these nets share with execution order: layers
    up to and including the first strided one get `first_dilation`, the later ones `dilation`. Strided
    convolutions and pools get stride 1. Convolutions whose padding was "same" keep "same" padding.

    Args:
        stage: The stage (a block or a sequence of blocks).
        first_dilation: Dilation up to and including the layer that used to downsample.
        dilation: Dilation of the layers after it.
    """
    seen_stride = False
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size
            was_strided = max(module.stride) > 1
            old_pad = module.padding if isinstance(module.padding, tuple) else None
            was_same = old_pad is not None and old_pad == _same_padding(kernel, module.dilation[0])
            rate = first_dilation if not seen_stride or was_strided else dilation
            if was_strided:
                module.stride = (1, 1)
                seen_stride = True
            if max(kernel) > 1:
                module.dilation = (rate, rate)
                if was_same:
                    module.padding = _same_padding(kernel, rate)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = module.stride if isinstance(module.stride, int) else max(module.stride)
            if stride > 1:
                module.stride = 1
                seen_stride = True
