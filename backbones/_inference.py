"""The inference form of a network: batch norm folded into the convolution before it.

In evaluation a batch norm is a per-channel affine map, `y = (x - mean) / sqrt(var + eps) * gamma + beta`,
so when its input is the output of a convolution that nothing else reads, it can be folded into that
convolution's weight and bias (Ioffe & Szegedy 2015; the rule of `torch.nn.utils.fusion.fuse_conv_bn_eval`).
The folded network computes the same function up to float rounding with one pass over memory fewer per
pair, which is most of the difference in CPU time on these small-channel nets.

>>> from backbones import fuse_for_inference
>>> fast = fuse_for_inference(model)  # a fused copy in eval mode; `model` is untouched
>>> fast = fuse_for_inference(model, channels_last=True)  # also NHWC weights and inputs

Which batch norms follow which convolution is read from one traced forward pass (forward hooks on a
small probe input), not from module names, so timm's blocks (`conv` + `BatchNormAct2d`, whose activation
stays), torchvision's `Conv2dNormActivation`, our heads and our own blocks are all handled by the same
code. A pair is folded only when the convolution's output tensor went into that batch norm and into no
other module that ran, each module ran once, and the batch norm is a plain `BatchNorm2d` with running
statistics (or timm's `BatchNormAct2d`, replaced by its activation). The fold is done in float64 and the
fused copy is run on the probe and compared with the original in float64 before being cast back; a
difference beyond rounding raises, so a wrong fold never goes unnoticed.

Training is never affected: the fused network is a copy, in eval mode, with `requires_grad` off; the
original keeps its batch norms, parameters and buffers bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

# The fold is computed and checked in float64, where it is exact up to rounding (~1e-12 relative); a
# difference beyond CHECK_RTOL means a wrong pairing, not rounding.
CHECK_RTOL = 1e-7
# fp32: worst difference between a fused network and the original on the same input, relative to the
# output's largest magnitude, for networks with ordinary batch-norm statistics. Folding reorders one
# multiply-add per weight; measured on every registered backbone and head it stays below 1e-5
# (tests/backbones/test_inference.py), 1e-4 leaves margin. An ill-conditioned network (whose own fp32
# output is far from its fp64 output) differs from itself in fp32 by as much; compare in float64 there.
FUSION_RTOL = 1e-4


class ChannelsLast(nn.Module):
    """Runs the wrapped network on a channels-last (NHWC) copy of its input.

    The values of every output are the same as with NCHW input; only the memory layout differs, which
    oneDNN's CPU convolutions prefer. The weights must be channels-last too (`fuse_for_inference` does it).

    Args:
        network: Any network taking (N, C, H, W) images.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor):
        """x: (N, C, H, W) in any layout -> the network's outputs for it."""
        return self.network(x.contiguous(memory_format=torch.channels_last))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn`'s eval-mode affine map into `conv` in place (weight rescaled per output channel, bias set)."""
    with torch.no_grad():
        inv_std = 1 / torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight * inv_std if bn.affine else inv_std
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        new_bias = (bias - bn.running_mean) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What takes the batch norm's place once folded; None when this kind of norm cannot be folded."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    # timm's BatchNormAct2d: batch norm, then `drop` (identity in eval), then `act`; keep the last two.
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return None


def _foldable_pairs(model: nn.Module, probe: Tensor) -> list[tuple[str, str]]:
    """(conv name, batch norm name) pairs where the conv's output was read by that batch norm alone.

    Runs `model` once on `probe` with hooks: every module's call records which tensors it read, every
    convolution's call which tensor it wrote.
    """
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    calls: dict[str, int] = {}
    conv_output: dict[int, str] = {}  # id(output tensor) -> conv name
    readers: dict[int, list[str]] = {}  # id(tensor) -> names of the modules that read it
    keep_alive: list[Tensor] = []  # ids stay unique only while the tensors live

    def pre_hook(module: nn.Module, args: tuple) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        for leaf in tree_flatten(args)[0]:
            if isinstance(leaf, Tensor):
                readers.setdefault(id(leaf), []).append(name)
                keep_alive.append(leaf)

    def conv_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        if isinstance(output, Tensor):
            conv_output[id(output)] = names[module]
            keep_alive.append(output)

    handles = [m.register_forward_pre_hook(pre_hook) for m in names]
    handles += [m.register_forward_hook(conv_hook) for m in names if type(m) is nn.Conv2d or _is_conv(m)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules(remove_duplicate=False))
    pairs = []
    for tensor_id, conv_name in conv_output.items():
        # Containers (Sequential, blocks) also "read" tensors handed between their children; only leaf
        # modules compute, so only their reads count as uses.
        leaf_readers = [r for r in readers.get(tensor_id, []) if _is_norm(modules[r]) or not any(modules[r].children())]
        if len(leaf_readers) != 1:
            continue
        bn_name = leaf_readers[0]
        bn = modules[bn_name]
        if not _is_norm(bn) or calls.get(conv_name) != 1 or calls.get(bn_name) != 1:
            continue
        if bn.num_features != modules[conv_name].out_channels or bn.running_var is None:
            continue
        pairs.append((conv_name, bn_name))
    return pairs


def _is_conv(module: nn.Module) -> bool:
    # nn.Conv2d and subclasses that keep its weight / bias semantics (timm's Conv2dSame pads, then conv2d).
    return isinstance(module, nn.Conv2d) and not isinstance(module, nn.LazyConv2d)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) and _replacement(module) is not None


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _max_relative_difference(a, b) -> float:
    flat_a, flat_b = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(flat_a) != len(flat_b):
        raise RuntimeError(f"fused network returned {len(flat_b)} tensors, the original {len(flat_a)}")
    worst = 0.0
    for x, y in zip(flat_a, flat_b):
        if isinstance(x, Tensor) and x.is_floating_point() and x.numel():
            scale = x.abs().max().clamp_min(1e-12)
            worst = max(worst, float((x - y).abs().max() / scale))
    return worst


def fuse_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = False,
    probe: Tensor | Callable[[], Tensor] | None = None,
) -> nn.Module:
    """A fused copy of `model` for inference and export: batch norms folded into the convolutions before them.

    Args:
        model: Any network taking (N, C, H, W) images: a backbone, a task's `deployable()` network,
            a torchvision or timm model. It is not modified.
        channels_last: Also store the weights channels-last and wrap the copy in `ChannelsLast`, so
            inputs are converted on entry (same values; faster on CPU for some nets, see docs/speed.md).
            Leave False before ONNX export (the exporter wants the plain network).
        probe: The input of the traced forward pass (and of the equality check), or a function making it.
            Default: one 3 x 64 x 64 image (the model's `in_chans` channels when it has that attribute).

    Returns:
        The fused copy, in eval mode, parameters without gradients; `model(x)` and `copy(x)` agree to
        float rounding for every input (tests: every registered backbone with every head).

    Raises:
        RuntimeError: In float64 the fused copy differs from `model` on the probe by more than
            `CHECK_RTOL` (a fold that does not hold, i.e. a convolution output also read by a function
            the hooks cannot see).
    """
    if callable(probe) and not isinstance(probe, Tensor):
        probe = probe()
    if probe is None:
        in_chans = getattr(model, "in_chans", None)
        if not isinstance(in_chans, int):
            in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        probe = torch.randn(1, in_chans, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    modes = {module: module.training for module in model.modules()}  # each module's own, restored below
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        # Fold in float64 and check in float64: the fold is then exact to ~1e-12 whatever the network's
        # conditioning, so the check tests the pairing alone, and the folded weights are rounded once.
        reference_model = copy.deepcopy(model).double()
        fused = copy.deepcopy(reference_model)
        probe64 = probe.double()
        pairs = _foldable_pairs(fused, probe64)
        modules = dict(fused.named_modules(remove_duplicate=False))
        for conv_name, bn_name in pairs:
            _fold(modules[conv_name], modules[bn_name])
            _set_submodule(fused, bn_name, _replacement(modules[bn_name]))
        with torch.no_grad():
            difference = _max_relative_difference(reference_model(probe64), fused(probe64))
        if difference > CHECK_RTOL:
            raise RuntimeError(
                f"fuse_for_inference: the fused {type(model).__name__} differs from the original by {difference:.2e} "
                f"(relative to the largest output, float64) on the probe input, more than {CHECK_RTOL:.0e}: a "
                "convolution's output is read by its batch norm and by something else; please report it"
            )
        fused = fused.to(dtype)
        for parameter in fused.parameters():
            parameter.requires_grad_(False)
        fused.fused_pairs = len(pairs)  # how many batch norms were folded (reported by the benchmarks)
    finally:
        for module, training in modes.items():
            module.training = training
    if channels_last:
        fused = ChannelsLast(fused.to(memory_format=torch.channels_last)).eval()
        fused.fused_pairs = len(pairs)
    return fused
