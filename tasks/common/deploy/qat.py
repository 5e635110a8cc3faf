"""Quantization-aware training (QAT) of a task's network with NNCF, for the int8 ONNX export.

    python -m tasks.segmentation export --ckpt_path CKPT --output model_int8.onnx --int8 --qat_steps 300 \
        [--qat_lr 1e-5] [--calibration_batches 8] [--config ...]

Post-training quantization (`tasks.common.deploy.quantize`) only chooses 8-bit ranges; QAT also fine-tunes the
weights with the 8-bit rounding in the forward pass (straight-through gradients), which recovers what rounding
costs a network that PTQ hurts. It runs at export, on the trained checkpoint, so training and checkpoints stay
as they are and the QAT network never needs to be loaded back into a task module:

1. `deployable()` (backbone + head) is copied with batch norm folded into the convolutions
   (`backbones.fuse_for_inference`): the int8 graph has no batch norm, so the fake-quantized weights are those
   onnxruntime will run (a batch norm after a quantized convolution would keep it out of `QLinearConv`).
2. `nncf.quantize` inserts fake quantizers, initialized on the export's calibration images, with settings
   that match onnxruntime's CPU int8 kernels (measured: with NNCF's defaults onnxruntime fused 20 of 55
   convolutions of a MobileNetV2 DeepLabv3 and ran it at 2x the fp32 time; with these, all 54 that PTQ fuses,
   at PTQ's speed): activations uint8 asymmetric (`QuantizationPreset.MIXED`) and **per tensor** (NNCF quantizes
   depthwise inputs per channel by default, which `QLinearConv` cannot take), weights int8 per output channel,
   all 8 bits (`OverflowFix.DISABLE`: the 7-bit weights of NNCF's overflow fix are for CPUs without VNNI).
3. `steps` optimizer steps (AdamW, constant `lr`) on the task's training batches (with the training
   augmentation), minimizing the task's own loss of the network's outputs (`TaskModule.network_loss`).
4. The fake quantizers become PyTorch's `FakeQuantize` modules (`nncf.strip`), which `torch.onnx.export`
   writes as QuantizeLinear / DequantizeLinear pairs: the same QDQ format as PTQ, read by onnxruntime,
   OpenVINO and TensorRT alike; `requantize_concats` adds the (value-preserving) quantization after Concats
   that NNCF leaves float, and `quantize_convolution_outputs` a calibrated uint8 output to the convolutions
   that feed the output part (as PTQ quantizes them). The input normalization and the task's output part stay
   float, as in PTQ.

Needs the optional extra: `pip install -e ".[qat]"` (NNCF 3.4 and torchao, which `nncf.strip` uses; NNCF
compiles its CPU fake-quantization kernels with the system C++ compiler on first use).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn
from tqdm.auto import tqdm

from tasks.common.deploy.onnx_graph import node_links
from tasks.common.deploy.quantize import interpolation_matmul_nodes, shape_derived_tensors


@dataclass(frozen=True)
class QATReport:
    """What `quantization_aware_training` did.

    Attributes:
        steps: Optimizer steps taken.
        learning_rate: AdamW's (constant) learning rate.
        calibration_images: Images the quantizers were initialized on.
        quantizers: Fake quantizers in the network (weights and activations).
        loss_first: Mean loss over the first tenth of the steps (at least one).
        loss_last: Mean loss over the last tenth.
    """

    steps: int
    learning_rate: float
    calibration_images: int
    quantizers: int
    loss_first: float
    loss_last: float

    def format(self) -> str:
        """One line for the export summary."""
        return (
            f"int8 by quantization-aware training: {self.quantizers} quantizers initialized on "
            f"{self.calibration_images} training images, {self.steps} steps at lr {self.learning_rate:g}, "
            f"loss {self.loss_first:.4g} -> {self.loss_last:.4g} (first / last tenth of the steps)"
        )


def _nncf():
    try:
        import nncf
    except ImportError as err:
        raise ImportError('quantization-aware training (--qat_steps) needs NNCF: pip install -e ".[qat]"') from err
    return nncf


def quantize_for_training(network: nn.Module, calibration: list[Tensor]) -> nn.Module:
    """`network` (batch norms folded) with NNCF fake quantizers that onnxruntime's int8 kernels can run.

    Args:
        network: Normalized (N, 3, H, W) images -> the task's raw outputs; modified in place by NNCF.
        calibration: Normalized image batches to initialize the quantization ranges on.

    Returns:
        The network with fake quantizers (NNCF's hooks), in training mode, every parameter trainable.
    """
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    for parameter in network.parameters():
        parameter.requires_grad_(True)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE,
        activations_quantization_params=QuantizationParameters(per_channel=False),
        weights_quantization_params=QuantizationParameters(per_channel=True),
    )
    quantized = nncf.quantize(
        network.eval(),
        nncf.Dataset(calibration),
        preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(calibration),  # NNCF counts dataset items: batches
        advanced_parameters=advanced,
    )
    _keep_zero_based_ranges(quantized)
    return quantized.train()


# NNCF names an activation quantizer after the op whose output it reads: "post_hooks.<path>/<op>/<i>__0.0".
# `F.relu6` runs as hardtanh(0, 6) (timm's and torchvision's ReLU6).
_RELU_OUTPUT = re.compile(r"^post_hooks\..*/(relu|relu_|relu6|relu6_|hardtanh|hardtanh_)/\d+__\d+")
_RELU6_OPS = ("relu6", "relu6_", "hardtanh", "hardtanh_")


def _relu_output_quantizers(network: nn.Module) -> list[tuple[str, Any]]:
    """(op name, quantizer) of the asymmetric quantizers on ReLU / ReLU6 outputs."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricQuantizer

    found = []
    for name, hook in get_hook_storage(network).named_hooks():
        match = _RELU_OUTPUT.match(name)
        if match and isinstance(hook, AsymmetricQuantizer):
            found.append((match.group(1), hook))
    return found


def _keep_zero_based_ranges(network: nn.Module) -> int:
    """Fix at 0 the lower bound of the quantizers on ReLU / ReLU6 outputs, and keep it there while training.

    A uint8 range that starts below 0 has a zero point above 0, and then onnxruntime cannot drop the Clip
    between a convolution and its QuantizeLinear, so that convolution runs in float. NNCF trains each
    asymmetric quantizer's `input_low`: after a ReLU6 it starts at 0 and drifts a few thousandths below it
    (measured: 12 of 54 convolutions of a MobileNetV2 DeepLabv3 fell back to float after 20 steps), and on an
    all-zero (dead) activation it is initialized at minus half of NNCF's minimal range. These activations are
    never negative, so a range from 0 loses nothing; PTQ's ranges start at 0 the same way.

    Returns:
        How many quantizers were fixed.
    """
    quantizers = _relu_output_quantizers(network)
    with torch.no_grad():
        for _, hook in quantizers:
            hook.input_low.zero_()
            hook.input_low.requires_grad_(False)
    return len(quantizers)


def _cap_relu6_ranges(network: nn.Module) -> int:
    """Cap the range of the quantizers on ReLU6 outputs at 6 (after training, before export).

    The trained `input_range` may grow past 6; levels above 6 are never used (the ReLU6 caps its output), but
    a range past 6 keeps onnxruntime from dropping the Clip before the QuantizeLinear, so the convolution
    would run in float. Capping moves the quantization grid of those tensors by the excess only.

    Returns:
        How many ranges were capped.
    """
    capped = 0
    with torch.no_grad():
        for op, hook in _relu_output_quantizers(network):
            if op in _RELU6_OPS and bool((hook.input_low + hook.input_range > 6.0).any()):
                # in place: NNCF keeps the range as a parameter, in log storage for some quantizers
                capped_range = torch.clamp(hook.input_range, max=6.0 - 1e-6 - hook.input_low)
                storage = hook._input_range_param_storage
                storage.copy_(capped_range.log() if hook._is_using_log_scale_storage else capped_range)
                capped += 1
    return capped


def strip_to_torch_fake_quantize(network: nn.Module, example: Tensor) -> nn.Module:
    """NNCF's quantizers replaced by PyTorch `FakeQuantize` modules, which the ONNX exporter writes as QDQ pairs.

    `nncf.strip(..., StripFormat.NATIVE)` (NNCF 3.4) visits each hook module once, so a quantizer NNCF shares
    between several tensors (the inputs of a Concat get one scale: the ASPP branches) is replaced at one place
    only and the others still export as NNCF's `org.openvinotoolkit:FakeQuantize`, which onnxruntime cannot
    load. Those are converted here too.
    """
    nncf = _nncf()
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer
    from nncf.torch.quantization.strip import convert_to_torch_fakequantizer

    stripped = nncf.strip(network.eval(), do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example)
    storage = get_hook_storage(stripped)
    for name, hook in list(storage.named_hooks(remove_duplicate=False)):
        if isinstance(hook, BaseQuantizer):
            storage.set_submodule(name, convert_to_torch_fakequantizer(hook))
    return stripped.eval()


def requantize_concats(model: onnx.ModelProto) -> int:
    """Quantize (in place) each Concat output whose inputs all come dequantized with one scale and zero point.

    NNCF gives the inputs of a Concat one shared quantizer and none to its output, so the exported Concat
    reads DequantizeLinear outputs and writes float: onnxruntime then runs the Concat in float and the
    convolution after it (the ASPP projection, the DeepLabv3+ decoder's first convolution) in float too, as it
    needs a dequantized input to fuse into `QLinearConv` (measured: DeepLabv3+ at 0.65x of fp32 instead of
    PTQ's 0.45x for that one float convolution at stride 4). A QuantizeLinear -> DequantizeLinear pair with the
    inputs' own parameters after the Concat lets both run in uint8. Where every input arrives unchanged (a
    DequantizeLinear output, an Expand broadcast of one, a nearest-neighbour Resize) the pair changes no value;
    where one arrives through a bilinear resize (DeepLabv3+ upsampling ASPP's output to stride 4: a linear
    Resize, or the export's two MatMuls by interpolation matrices, `heads._layers.bilinear_as_matmuls`), its values
    stay in the range but fall between grid points, and where the inputs have different scales (NNCF unifies
    them for some Concats only) the output gets one uint8 grid spanning all the inputs' ranges; both round by
    at most half a step of the output grid: what post-training quantization does to every tensor, and what
    the export's int8-vs-fake-quantized comparison then includes.

    Returns:
        How many Concats were quantized.
    """
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # (in graph order: a constant comes before its readers)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # the exporter's shared constants
            values[node.output[0]] = values[node.input[0]]
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | set(values)
    interpolated = {n.output[0] for n in interpolation_matmul_nodes(model)}  # the export's bilinear resizes
    weights = shape_derived_tensors(model) | set(values)

    def dequantized_source(name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear whose values reach `name` through ops that keep them in its range."""
        node = producer.get(name)
        if node is not None and node.op_type == "Expand":  # a broadcast copies values
            return dequantized_source(node.input[0])
        if node is not None and name in interpolated:  # a bilinear resize as MatMuls: convex combinations
            data = [i for i in node.input if i not in weights]
            return dequantized_source(data[0]) if len(data) == 1 else None
        if node is not None and node.op_type == "Resize":
            mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest")
            if mode in (b"nearest", b"linear"):  # copies, or convex combinations of neighbours (never cubic)
                return dequantized_source(node.input[0])
            return None
        return node if node is not None and node.op_type == "DequantizeLinear" and len(node.input) == 3 else None

    count = 0
    for node in list(graph.node):
        if node.op_type != "Concat" or node.output[0] in outputs:
            continue
        feeders = [dequantized_source(name) for name in node.input]
        if not all(f is not None for f in feeders):
            continue
        params = [tuple(values.get(name) for name in f.input[1:]) for f in feeders]
        if any(v is None for p in params for v in p):
            continue
        if any(s.size != 1 or z.dtype != np.uint8 for s, z in params):
            continue  # per-tensor uint8 only (what the QAT recipe makes)
        quantized, dequantized = f"{node.output[0]}_requantized", f"{node.output[0]}_dequantized"
        if quantized in taken or dequantized in taken:
            continue
        if all(np.array_equal(s, params[0][0]) and np.array_equal(z, params[0][1]) for s, z in params):
            scale_name, zero_name = feeders[0].input[1], feeders[0].input[2]
        else:  # inputs on different grids (no unified scale): one uint8 grid covering all their ranges
            low = min(float(-z.astype(np.int64) * s) for s, z in params)
            high = max(float((255 - z.astype(np.int64)) * s) for s, z in params)
            scale = np.float32((high - low) / 255.0)
            zero = np.uint8(np.clip(np.round(-low / scale), 0, 255))
            scale_name, zero_name = f"{node.output[0]}_scale", f"{node.output[0]}_zero_point"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(scale), scale_name),
                    numpy_helper.from_array(np.array(zero), zero_name),
                ]
            )
        _insert_quantize_dequantize(
            graph, node, (scale_name, zero_name), (quantized, dequantized),
            (f"{node.name}_requantize", f"{node.name}_dequantize"),
        )  # fmt: skip
        count += 1
    return count


def float_output_convolutions(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv nodes that read dequantized inputs and weights and write float that no QuantizeLinear reads.

    (Directly or through the ReLU / ReLU6 that onnxruntime folds into the convolution.) NNCF quantizes
    operation inputs, so the convolutions whose outputs only reach the float output part (the SSDLite
    predictors' last convolutions before the box decoding, depth's last 1x1 convolution before the sigmoid) get
    no output quantizer, and onnxruntime runs them as float convolutions (it fuses `QLinearConv` only between a
    dequantize and a quantize).
    """
    producer, readers = node_links(model.graph)

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    def quantized(name: str) -> bool:  # read by QuantizeLinear, possibly through the ReLU / ReLU6 it absorbs
        nodes = readers.get(name, [])
        if len(nodes) == 1 and nodes[0].op_type in ("Relu", "Clip"):
            return quantized(nodes[0].output[0])
        return any(n.op_type == "QuantizeLinear" for n in nodes)

    graph_outputs = {o.name for o in model.graph.output}
    return [
        node
        for node in model.graph.node
        if node.op_type == "Conv"
        and node.output[0] not in graph_outputs
        and dequantized(node.input[0])
        and dequantized(node.input[1])
        and not quantized(node.output[0])
    ]


def quantize_convolution_outputs(model: onnx.ModelProto, batches: Iterable[np.ndarray]) -> int:
    """Give `float_output_convolutions` a uint8 output (QuantizeLinear -> DequantizeLinear), calibrated on `batches`.

    The range is the min / max of the output over the batches (widened to include 0), as post-training
    quantization calibrates it, so these convolutions run as `QLinearConv` like PTQ's; what follows them stays
    float. Measured on BCCD SSDLite MobileNetV2 (12 predictor convolutions), real images at batch 8: the QAT
    file went from 0.81x to 0.61x of fp32 (PTQ's: 0.56x). Modifies `model` in place.

    Args:
        model: The exported QAT model (its graph input is the uint8 image).
        batches: uint8 (N, 3, H, W) image batches, as the model reads them.

    Returns:
        How many convolutions were given a quantized output.
    """
    import onnxruntime as ort

    convolutions = float_output_convolutions(model)
    if not convolutions:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = [node.output[0] for node in convolutions]
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    low, high = dict.fromkeys(outputs, 0.0), dict.fromkeys(outputs, 0.0)
    for batch in batches:
        for name, value in zip(outputs, session.run(outputs, {input_name: batch})):
            low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
    graph = model.graph
    for node in convolutions:
        name = node.output[0]
        scale = np.float32(max(high[name] - low[name], 1e-8) / 255.0)
        zero = np.uint8(np.clip(np.round(-low[name] / scale), 0, 255))
        quantized, dequantized = f"{name}_output_quantized", f"{name}_output_dequantized"
        graph.initializer.extend([numpy_helper.from_array(np.array(scale), f"{name}_output_scale"),
                                  numpy_helper.from_array(np.array(zero), f"{name}_output_zero_point")])  # fmt: skip
        _insert_quantize_dequantize(
            graph, node, (f"{name}_output_scale", f"{name}_output_zero_point"), (quantized, dequantized),
            (f"{node.name}_output_quantize", f"{node.name}_output_dequantize"),
        )  # fmt: skip
    return len(convolutions)


def _insert_quantize_dequantize(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    params: tuple[str, str],
    values: tuple[str, str],
    names: tuple[str, str],
) -> None:
    """QuantizeLinear -> DequantizeLinear right after `node`, whose readers then read the dequantized value.

    Args:
        graph: The graph holding `node` (modified in place).
        node: The node whose first output gets quantized.
        params: Names of the scale and zero point (already in the graph).
        values: Names of the quantized and the dequantized values.
        names: Names of the QuantizeLinear and DequantizeLinear nodes.
    """
    source, (quantized, dequantized) = node.output[0], values
    for reader in graph.node:
        for i, name in enumerate(reader.input):
            if name == source:
                reader.input[i] = dequantized
    position = list(graph.node).index(node) + 1
    graph.node.insert(position, helper.make_node("QuantizeLinear", [source, *params], [quantized], name=names[0]))
    graph.node.insert(
        position + 1, helper.make_node("DequantizeLinear", [quantized, *params], [dequantized], name=names[1])
    )


def _forever(batches: Iterable[dict]) -> Iterator[dict]:
    """`batches` over and over (a data loader re-iterated each pass, not cached like `itertools.cycle`)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def count_fake_quantizers(network: nn.Module) -> int:
    """Fake-quantize modules in `network` (NNCF's or PyTorch's)."""
    return sum(type(m).__name__.endswith(("FakeQuantize", "Quantizer")) for m in network.modules())


def quantization_aware_training(
    network: nn.Module,
    loss_fn: Callable[[Any, dict], Tensor],
    calibration: list[Tensor],
    train_batches: Iterable[dict],
    *,
    steps: int,
    lr: float = 1e-5,
    progress: bool = True,
) -> tuple[nn.Module, QATReport]:
    """Fine-tune a fake-quantized, batch-norm-folded copy of `network`; return it ready for ONNX export.

    Args:
        network: The task's `deployable()` network (normalized images -> raw outputs); not modified.
        loss_fn: (network outputs, training batch) -> scalar loss (`TaskModule.network_loss`).
        calibration: Normalized (N, 3, H, W) image batches to initialize the quantizers on.
        train_batches: Training batches (dicts with "image" and the task's targets); cycled if shorter than
            `steps`.
        steps: Optimizer steps (>= 1).
        lr: AdamW learning rate (QAT fine-tunes a trained network: small, e.g. 1e-5 .. 1e-4).
        progress: Show a progress bar.

    Returns:
        The fine-tuned network with PyTorch `FakeQuantize` modules, in eval mode, and what was done.

    Raises:
        ValueError: `steps` < 1, no calibration images, or no training batches.
    """
    from backbones import fuse_for_inference

    if steps < 1:
        raise ValueError(f"--qat_steps must be at least 1, got {steps}")
    if not calibration:
        raise ValueError("quantization-aware training needs calibration images to initialize its quantizers")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF logs each compile step at INFO
    folded = fuse_for_inference(network, channels_last=False, probe=calibration[0][:1])
    quantized = quantize_for_training(folded, calibration)
    optimizer = torch.optim.AdamW([p for p in quantized.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    batches = _forever(train_batches)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="quantization-aware training", disable=not progress)
    for _ in bar:
        batch = next(batches, None)
        if batch is None:
            raise ValueError("quantization-aware training got no training batches (is the training split empty?)")
        loss = loss_fn(quantized(batch["image"]), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"quantization-aware training: the loss became {loss.item()} (lower --qat_lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
    tenth = max(1, steps // 10)
    report = QATReport(
        steps=steps,
        learning_rate=lr,
        calibration_images=sum(len(batch) for batch in calibration),
        quantizers=count_fake_quantizers(quantized),
        loss_first=sum(losses[:tenth]) / tenth,
        loss_last=sum(losses[-tenth:]) / tenth,
    )
    _cap_relu6_ranges(quantized)
    return strip_to_torch_fake_quantize(quantized, calibration[0][:1]), report
