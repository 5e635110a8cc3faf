"""TFLite / LiteRT export: a task module -> one .tflite file (fp32 or int8), checked in the LiteRT interpreter.

The optional extra `pip install -e ".[tflite]"` (litert-torch 0.10 and ai-edge-litert 2.3; they pull in jax,
transformers and torchao, so they stay out of the default install) provides the converter and the interpreter.
The graph is the ONNX export's `DeployableModel` (`tasks.common.deploy.graph`: uint8 RGB in, normalization
inside, task outputs out), converted by `litert_torch.convert` (torch.export, then the LiteRT converter):

- **Static shape.** The file takes one image of the size it was exported at (batch 1, the data's image size):
  LiteRT graphs are static unless exported with `dynamic_shapes`, and phone apps resize the camera frame to a
  fixed input anyway.
- **NHWC by default.** `layout="nhwc"` takes (1, H, W, 3) uint8 (what an Android `Bitmap` / iOS pixel buffer
  gives) and returns 4-D image-shaped outputs channels-last: segmentation logits (1, H, W, K), depth
  (1, H, W, 1); the class map stays (1, H, W). The converter works channels-last inside, so this costs no
  transpose. `layout="nchw"` keeps the ONNX layout.
- **Detection: raw head outputs only.** The NMS in the ONNX graph does not convert: `torch.export` stops on
  torchvision's data-dependent `batched_nms` (`GuardOnDataDependentSymNode: Could not guard on data-dependent
  expression 4*u0 > 4000`), and `torchvision.ops.nms` itself has no lowering (`RuntimeError: Lowering not
  found: torchvision.nms.default`). The TFLite file returns what `--raw` ONNX exports return (offsets, logits,
  default boxes); decode and NMS run in the application (`heads.box_coder.decode_boxes`, weights 10, 10, 5, 5).
  The export verifies that the module's own post-processing gives the same detections on the interpreter's
  raw outputs as on PyTorch's.
- **int64 outputs become int32** (litert-torch's default `enable_x64=False`; most phone runtimes have no
  64-bit integer kernels).
- **int8**: PyTorch's PT2E flow with litert-torch's `PT2EQuantizer` (symmetric int8, per-channel weights,
  histogram-calibrated activations) on the network alone, calibrated on the task's training images; the
  input normalization and the output part stay float. Then converted with `qdq_conversion_mode="STATIC"`.

A converter bug is worked around here: in the DeepLabv3 heads' image-pooling branch (`heads._layers.
ImagePooling`, a (N, C, 1, 1) map expanded to (N, C, H, W)), litert-torch 0.10 writes a `BROADCAST_TO` whose
input is still NCHW but whose target shape it turned NHWC, and the interpreter refuses the file
(`tflite/kernels/broadcast_to.cc Output shape must be broadcastable from input shape. Node number 74
(BROADCAST_TO) failed to prepare.`). `tflite_friendly` swaps that expand for an equal broadcast add.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn

from tasks.common.deploy.graph import INPUT_DESCRIPTION, INPUT_NAME, DeployableModel
from tasks.common.deploy.onnx_export import (
    calibration_batches,
    check_output_path,
    deployable_model,
    deployment,
    max_relative_error,
    random_images,
    task_of,
)
from tasks.common.files import atomic_path, write_json_atomic

# fp32 interpreter vs PyTorch: relative to the output's largest magnitude (as the ONNX check).
VERIFY_RTOL = 1e-4
LAYOUTS = ("nhwc", "nchw")
INSTALL_HINT = 'pip install -e ".[tflite]"  (litert-torch 0.10 and ai-edge-litert 2.3; they add jax and transformers)'


def require_litert() -> None:
    """Raise an ImportError naming the extra to install when litert-torch or ai-edge-litert is missing."""
    missing = []
    for name in ("litert_torch", "ai_edge_litert"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"the TFLite export needs {' and '.join(missing)}: {INSTALL_HINT}")


class _BroadcastImagePooling(nn.Module):
    """`heads._layers.ImagePooling` (same weights) broadcasting with an add instead of `expand` (see module doc)."""

    def __init__(self, pooling: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = pooling.conv, pooling.bn, pooling.act

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W), constant over H and W (eval mode)."""
        y = self.act(self.bn(self.conv(nn.functional.adaptive_avg_pool2d(x, 1))))  # (N, C_out, 1, 1)
        # + zeros (N, 1, H, W): the same values as expand; converts to an ADD the interpreter prepares.
        return y + torch.zeros_like(x[:, :1])


def tflite_friendly(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with the modules litert-torch 0.10 mis-converts replaced by equal ones."""
    from heads._layers import ImagePooling

    model = copy.deepcopy(model).eval()
    for child in list(model.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, ImagePooling):
                setattr(child, attr, _BroadcastImagePooling(sub))
    return model


class TFLiteGraph(nn.Module):
    """`DeployableModel` with named outputs (a dict, so the file's outputs carry the names) and a layout.

    Args:
        model: The deployable graph (uint8 NCHW in).
        layout: "nhwc": (N, H, W, 3) input, 4-D outputs channels-last; "nchw": the ONNX layout.
    """

    def __init__(self, model: DeployableModel, layout: str = "nhwc") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.model, self.layout = model, layout
        self.output_names = tuple(model.output_names)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """(N, H, W, 3) or (N, 3, H, W) uint8 -> {output name: tensor}."""
        if self.layout == "nhwc":
            image = image.permute(0, 3, 1, 2)
        outputs = self.model(image)
        if self.layout == "nhwc":
            outputs = tuple(o.permute(0, 2, 3, 1) if o.ndim == 4 else o for o in outputs)
        return dict(zip(self.output_names, outputs))

    def input_from_nchw(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 -> what this graph takes."""
        return images.permute(0, 2, 3, 1).contiguous() if self.layout == "nhwc" else images


def _convert(graph: TFLiteGraph, sample: Tensor, path: Path, quant_config: Any = None) -> None:
    import litert_torch

    edge = litert_torch.convert(graph.eval(), sample_kwargs={INPUT_NAME: sample}, quant_config=quant_config)
    edge.export(str(path))


def quantize_network_pt2e(network: nn.Module, sample: Tensor, batches: Iterable[Tensor]) -> tuple[nn.Module, Any]:
    """PT2E static int8 of `network` with litert-torch's quantizer, calibrated on normalized images.

    Args:
        network: Normalized (1, 3, H, W) float images -> raw outputs.
        sample: A (1, 3, H, W) normalized image to trace with.
        batches: Normalized float (N, 3, H, W) images (fed one at a time: the traced graph has batch 1).

    Returns:
        The quantized (fake-quantized QDQ) module and the quantizer (for `QuantConfig`).

    Raises:
        ValueError: No calibration image.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class Quantizer(PT2EQuantizer):
        # Sigmoid and softmax keep float: with their fixed output scale (1/256) the converter refuses the
        # depth head's `max_depth * sigmoid(x)` ("'tfl.reshape' op quantization parameters violate the same
        # scale constraint: !quant.uniform<i8:f32, 3.906250e-03:-128> vs. ...<i8:f32, 0.00196...:-128>").
        STATIC_OPS = [op for op in PT2EQuantizer.STATIC_OPS if op != "fixed_qparams"]

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            _annotate_concats(model, self.global_config)
            return model

    quantizer = Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(network.eval(), (sample,)).module(), quantizer)
    count = 0
    with torch.no_grad():
        for batch in batches:
            for image in batch:
                prepared(image[None])
                count += 1
    if count == 0:
        raise ValueError("no calibration images for int8 (the calibration set is empty)")
    quantized = convert_pt2e(prepared, fold_quantize=False)
    # An exported module refuses .eval(); this makes it a no-op, so the composed graph can be set to eval.
    allow_exported_model_train_eval(quantized)
    return quantized, quantizer


def _annotate_concats(model: torch.fx.GraphModule, config: Any) -> None:
    """Quantize every `aten.cat` with one scale shared by its inputs and output (what TFLite's CONCATENATION needs).

    litert-torch's own cat annotator finds cats by source partition, which `torch.export` graphs of our heads
    do not carry, so it skips them. Left so, the converter gives the SSDLite head's concatenated offsets and
    logits the scale of the last input (the 1x1 map's, 2^-12), and the int8 file's outputs come out near zero.
    """
    from litert_torch.quantize.pt2e_quantizer_utils import _is_annotated, get_input_act_qspec, propagate_annotation
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    for node in model.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.cat.default or _is_annotated([node]):
            continue
        inputs = [n for n in node.args[0] if isinstance(n, torch.fx.Node)]
        if not inputs:
            continue
        shared = SharedQuantizationSpec((inputs[0], node))
        qspecs = {inputs[0]: get_input_act_qspec(config), **{n: shared for n in inputs[1:]}}
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=qspecs, output_qspec=shared, _annotated=True
        )
    propagate_annotation(model)


class Interpreter:
    """A .tflite file in the LiteRT interpreter, with checked inputs.

    Args:
        path: The .tflite file.
        threads: Interpreter threads.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TFLite file at {self.path}")
        self.interpreter = LiteRTInterpreter(model_path=str(self.path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        if INPUT_NAME not in details:
            raise ValueError(
                f"{self.path} has no '{INPUT_NAME}' input (inputs: {list(details)}); not a litedense export"
            )
        self.input_shape = tuple(int(d) for d in details[INPUT_NAME]["shape"])
        self.input_dtype = np.dtype(details[INPUT_NAME]["dtype"])

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One input array of `input_shape` and `input_dtype` -> {output name: array}."""
        image = np.asarray(image)
        if image.dtype != self.input_dtype or tuple(image.shape) != self.input_shape:
            raise ValueError(
                f"{self.path} takes {self.input_dtype.name} {list(self.input_shape)}, got {image.dtype.name} "
                f"{list(image.shape)}"
            )
        outputs = {k: np.array(v) for k, v in self.runner(**{INPUT_NAME: image}).items()}
        for name, detail in self.runner.get_output_details().items():
            scale, zero_point = detail["quantization"]
            if scale:  # an int8 file may return a float output quantized: read it as the float it stands for
                outputs[name] = ((outputs[name].astype(np.float32) - zero_point) * scale).astype(np.float32)
        return outputs

    def latency_ms(self, image: np.ndarray, repeats: int = 20, warmup: int = 3) -> float:
        """Median wall time of one call, in ms."""
        for _ in range(warmup):
            self(image)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self(image)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))


def _detections(module: LightningModule, raw: dict[str, np.ndarray], image_size: tuple[int, int]) -> tuple:
    """The module's own post-processing (its deploy graph's DetectionOutputs) on raw outputs."""
    outputs = deployment("detection").outputs(module, raw=False, image_size=image_size)
    with torch.no_grad():
        return outputs((torch.from_numpy(raw["box_regression"]), torch.from_numpy(raw["cls_logits"])), None)


def compare(
    module: LightningModule, graph: TFLiteGraph, interpreter: Interpreter, images: Tensor, image_size: tuple[int, int]
) -> dict[str, float]:
    """Max relative error of each interpreter output against PyTorch on one (1, 3, H, W) uint8 image.

    Class maps: the fraction of pixels that differ. Detection: also "detections", the worst relative error of
    boxes and scores after the module's post-processing (inf when the detection counts or labels differ).
    """
    x = graph.input_from_nchw(images)
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in graph(x).items()}
    actual = interpreter(x.numpy())
    errors = {}
    for name, e in expected.items():
        a = actual[name]
        if e.dtype.kind in "iu":
            errors[name] = float(np.mean(e.astype(np.int64) != a.astype(np.int64))) if e.shape == a.shape else 1.0
        else:
            errors[name] = max_relative_error(e, a)
    if "cls_logits" in expected:
        exp_det, act_det = _detections(module, expected, image_size), _detections(module, actual, image_size)
        n_exp, n_act = int(exp_det[3][0]), int(act_det[3][0])
        if n_exp != n_act or not torch.equal(exp_det[2][0, :n_exp], act_det[2][0, :n_act]):
            errors["detections"] = float("inf")
        else:
            errors["detections"] = max(
                max_relative_error(exp_det[0][0, :n_exp].numpy(), act_det[0][0, :n_act].numpy()),
                max_relative_error(exp_det[1][0, :n_exp].numpy(), act_det[1][0, :n_act].numpy()),
            )
    return errors


@dataclass
class TFLiteSummary:
    """What `export_tflite` wrote."""

    path: Path
    task: str
    precision: str
    layout: str
    input_shape: list[int]
    outputs: dict[str, list[int]]
    fp32_errors: dict[str, float]
    int8_errors: dict[str, float] | None = None
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The printed summary."""
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB): {self.task}, TFLite {self.precision}, {self.layout}",
            f"input: {INPUT_NAME}: uint8 {self.input_shape} (static shape)",
            f"  preprocessing: {INPUT_DESCRIPTION.replace('(N, 3, H, W)', self.layout.upper())}",
            "outputs:",
            *(f"  {name}: {dims}" for name, dims in self.outputs.items()),
            "fp32 LiteRT interpreter vs PyTorch (max relative error): "
            + ", ".join(f"{k} {v:.1e}" for k, v in self.fp32_errors.items()),
        ]
        if self.int8_errors is not None:
            lines.append(
                "int8 vs PyTorch fp32 (max relative error; class maps: fraction differing): "
                + ", ".join(f"{k} {v:.3g}" for k, v in self.int8_errors.items())
            )
        return "\n".join(lines + self.notes)


def export_tflite(
    module: LightningModule,
    output: str | os.PathLike,
    image_size: tuple[int, int],
    *,
    int8: bool = False,
    calibration: Iterable[np.ndarray] | None = None,
    datamodule: LightningDataModule | None = None,
    calibration_batches_count: int = 8,
    layout: str = "nhwc",
) -> TFLiteSummary:
    """Convert a task module's deployable graph to `output` (.tflite) and check it in the LiteRT interpreter.

    Args:
        module: The task module, with its weights.
        output: The .tflite file; written atomically (a failure leaves no file, an older file survives). A JSON
            sidecar `<output>.json` records the task, hyperparameters, layout and input convention.
        image_size: (H, W) of the static input.
        int8: PT2E static int8 (network only; normalization and outputs float).
        calibration: uint8 (N, 3, H, W) arrays of `image_size` to calibrate on; default: the training split of
            `datamodule` (`calibration_batches_count` batches, evaluation transform).
        datamodule: The task's data (calibration images when `calibration` is None).
        calibration_batches_count: Training batches to calibrate on.
        layout: "nhwc" (default, what phones feed) or "nchw".

    Returns:
        What was written.

    Raises:
        ImportError: litert-torch or ai-edge-litert is not installed.
        RuntimeError: The fp32 file's outputs differ from PyTorch's by more than `VERIFY_RTOL`.
        ValueError: Bad layout, empty calibration set, calibration images of another size.
    """
    require_litert()
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    output = check_output_path(output)
    task = task_of(type(module))
    image_size = (int(image_size[0]), int(image_size[1]))
    raw = task == "detection"  # NMS does not convert (module docstring)
    model = tflite_friendly(deployable_model(module, image_size, raw=raw))
    graph = TFLiteGraph(model, layout)
    sample = random_images(1, image_size)
    test_images = random_images(1, image_size, seed=1)
    notes = []
    if raw:
        notes.append("detection: raw head outputs (NMS does not convert to TFLite); decode + NMS in the application")
    with tempfile.TemporaryDirectory(prefix="litedense_tflite_") as tmp:
        fp32_path = Path(tmp) / "fp32.tflite"
        _convert(graph, graph.input_from_nchw(sample), fp32_path)
        fp32_errors = compare(module, graph, Interpreter(fp32_path), test_images, image_size)
        # The gate is the graph's own outputs. Detection sets after NMS follow from them, except for candidates
        # within float rounding of the score threshold or of an NMS IoU tie (common with untrained heads,
        # whose softmax scores sit near 1 / C): reported, and noted when they differ.
        bad = {k: v for k, v in fp32_errors.items() if v > VERIFY_RTOL and k != "detections"}
        if fp32_errors.get("detections", 0.0) > VERIFY_RTOL:
            notes.append(
                "detections after NMS differ between the interpreter's and PyTorch's raw outputs (which agree "
                "within 1e-4): candidates at the score threshold or NMS ties"
            )
        if bad:
            raise RuntimeError(
                "the TFLite graph differs from PyTorch: "
                + ", ".join(f"{k} max rel err {v:.3g}" for k, v in bad.items())
            )
        final, int8_errors = fp32_path, None
        if int8:
            if calibration is None:
                if datamodule is None:
                    raise ValueError("int8 needs calibration images: pass calibration= or datamodule=")
                calibration = calibration_batches(datamodule, calibration_batches_count)
            normalized = (_checked_calibration(b, image_size, model) for b in calibration)
            qnet, quantizer = quantize_network_pt2e(model.network, model.preprocess(sample), normalized)
            from litert_torch.quantize.quant_config import QuantConfig

            qgraph = TFLiteGraph(DeployableModel(qnet, model.outputs).eval(), layout)
            final = Path(tmp) / "int8.tflite"
            _convert(qgraph, qgraph.input_from_nchw(sample), final, QuantConfig(pt2e_quantizer=quantizer))
            int8_errors = compare(module, graph, Interpreter(final), test_images, image_size)
        interpreter = Interpreter(final)
        with atomic_path(output) as tmp_out:
            tmp_out.write_bytes(final.read_bytes())
    out_details = interpreter.runner.get_output_details()
    meta = {
        "task": task,
        "precision": "int8" if int8 else "fp32",
        "layout": layout,
        "outputs": "raw" if raw else "deploy",
        "image_size": list(image_size),
        "input": INPUT_DESCRIPTION,
        "hparams": {k: str(v) for k, v in module.hparams.items() if not str(k).startswith("_")},
    }
    write_json_atomic(output.with_name(output.name + ".json"), meta)
    return TFLiteSummary(
        path=output, task=task, precision=meta["precision"], layout=layout, input_shape=list(interpreter.input_shape),
        outputs={k: [int(d) for d in v["shape"]] for k, v in out_details.items()}, fp32_errors=fp32_errors,
        int8_errors=int8_errors, size_bytes=output.stat().st_size, notes=notes,
    )  # fmt: skip


def _checked_calibration(batch: np.ndarray, image_size: tuple[int, int], model: DeployableModel) -> Tensor:
    """uint8 (N, 3, H, W) -> normalized float, refusing another dtype or size with the expected one named."""
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != image_size:
        raise ValueError(
            f"calibration batches must be uint8 (N, 3, {image_size[0]}, {image_size[1]}) (the export's image size), "
            f"got {batch.dtype.name} {list(batch.shape)}"
        )
    with torch.no_grad():
        return model.preprocess(torch.from_numpy(batch))


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON sidecar `export_tflite` wrote beside `path`."""
    return json.loads(Path(str(path) + ".json").read_text())


def export_tflite_checkpoint(
    model: LightningModule,
    datamodule: LightningDataModule,
    ckpt_path: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    int8: bool = False,
    calibration_batches: int = 8,
    layout: str = "nhwc",
) -> TFLiteSummary:
    """What `python -m tasks.<task> export --format tflite` runs (the hook for `DeployTrainer.export`).

    Loads the checkpoint and builds a data-sized head as the ONNX export does (`onnx_export.prepare_for_export`:
    the task and the weights are checked), exports at the task's example size (`TaskDeployment.example_size`:
    the data's image size or training crop), calibrates int8 on the training split, and prints the summary.
    """
    from tasks.common.deploy.onnx_export import prepare_for_export

    require_litert()
    prepare_for_export(model, datamodule, ckpt_path)
    image_size = deployment(task_of(type(model))).example_size(datamodule)
    summary = export_tflite(
        model, output, image_size, int8=int8, datamodule=datamodule, calibration_batches_count=calibration_batches,
        layout=layout,
    )  # fmt: skip
    print(summary.format())
    return summary
