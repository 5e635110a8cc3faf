"""`python -m tasks.<task> export`: a checkpoint -> one self-contained ONNX file (fp32 or int8).

    python -m tasks.segmentation export --ckpt_path CKPT --output model.onnx [--int8 --calibration_batches 8]
        [--qat_steps 300 --qat_lr 1e-5] [--raw] [--config configs/segmentation/X.yaml]

The command is a subcommand of the shared LightningCLI (`tasks.common.cli`): `--config` and `--data.*` work
as for `fit` (the data settings give the image size and the calibration images), and the model is rebuilt
from the checkpoint's hyperparameters as `validate --ckpt_path` does. `DeployTrainer.export` runs it:

1. the checkpoint is checked (it must be this task's) and loaded (its weights must fit the model);
2. `DeployableModel` (`tasks.common.deploy.graph`) wraps the task's network with the uint8 input and
   normalization and the task's outputs (`tasks/<task>/deploy.py`), and is exported with the TorchScript
   exporter (`torch.onnx.export(dynamo=False, opset_version=17)`: the dynamo exporter needs onnxscript);
3. onnxruntime runs the file on a test batch and must match PyTorch (at a second size too, for dynamic
   height and width);
4. `--int8` calibrates `quantize_int8` (`tasks.common.deploy.quantize`) on `--calibration_batches`
   batches of the task's training split, read with the evaluation transform (deterministic resize, no
   augmentation) and turned back into the uint8 pixels the graph takes; `--int8 --qat_steps N` instead
   initializes quantizers on those batches and fine-tunes with them (`tasks.common.deploy.qat`), then
   exports the fake-quantized network as QDQ;
5. the file is written atomically, with the task, hyperparameters, class names and input convention in its
   metadata (what `validate --onnx` reads), and what was written is printed.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn
from torch.utils.data import Subset

from tasks.common.checkpoints import check_checkpoint, load_checkpoint_file
from tasks.common.data import make_loader
from tasks.common.deploy.graph import INPUT_DESCRIPTION, INPUT_NAME, DeployableModel
from tasks.common.deploy.quantize import pass_through_feeders
from tasks.common.files import atomic_path

OPSET = 17
# ONNX fp32 against PyTorch at export: relative to the output's largest magnitude.
VERIFY_RTOL = 1e-4


class TaskDeployment:
    """What a task's `tasks/<task>/deploy.py` declares (its `DEPLOYMENT` object)."""

    task: ClassVar[str]
    module_class: ClassVar[type]
    onnx_module_class: ClassVar[type]
    # Whether the graph takes any height and width (else: fixed to `example_size`).
    dynamic_size: ClassVar[bool] = True

    def outputs(self, module: Any, *, raw: bool, image_size: tuple[int, int]) -> nn.Module:
        """The output part of the graph, with `output_names`."""
        raise NotImplementedError

    def example_size(self, datamodule: LightningDataModule) -> tuple[int, int]:
        """(H, W) to trace at (and the graph's size when it is not dynamic)."""
        raise NotImplementedError

    def calibration_transform(self, datamodule: LightningDataModule) -> Any:
        """The evaluation transform, set on the training split for calibration."""
        return datamodule.predict_transform()

    def describe_outputs(self, module: Any) -> dict[str, str]:
        """Output name -> what it holds (for the printed summary)."""
        return {}


def deployment(task: str) -> TaskDeployment:
    """The `DEPLOYMENT` of `tasks/<task>/deploy.py`."""
    return importlib.import_module(f"tasks.{task}.deploy").DEPLOYMENT


def task_of(module_class: type) -> str:
    """The task of a task module class: "depth" for `tasks.depth.module.DepthModule` and its subclasses."""
    for klass in module_class.__mro__:
        parts = klass.__module__.split(".")
        if len(parts) >= 3 and parts[0] == "tasks" and parts[1] != "common":
            return parts[1]
    raise ValueError(f"{module_class.__name__} is not a litedense task module")


def deployable_model(module: LightningModule, image_size: tuple[int, int], *, raw: bool = False) -> DeployableModel:
    """The task module's deployable graph (uint8 in, task outputs out), in eval mode, on the CPU."""
    module = module.cpu().eval()
    spec = deployment(task_of(type(module)))
    return DeployableModel(module.deployable(), spec.outputs(module, raw=raw, image_size=image_size)).eval()


def _dynamic_axes(
    model: DeployableModel, example: torch.Tensor, dynamic_size: bool
) -> tuple[dict[str, dict[int, str]], dict[str, tuple[int, ...]]]:
    """Batch (and height / width) axes of the input and of every output that carries them; output shapes."""
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}}
    with torch.no_grad():
        outputs = model(example)
    n, (h, w) = example.shape[0], example.shape[-2:]
    shapes = {}
    for name, out in zip(model.output_names, outputs):
        out_axes = {0: "batch"} if out.ndim and out.shape[0] == n else {}
        if dynamic_size and out.ndim >= 3 and tuple(out.shape[-2:]) == (h, w):
            out_axes.update({out.ndim - 2: "height", out.ndim - 1: "width"})
        axes[name] = out_axes
        shapes[name] = tuple(out.shape)
    return axes, shapes


def _fix_static_dims(path: Path, axes: dict[str, dict[int, str]], shapes: dict[str, tuple[int, ...]]) -> None:
    """Write the fixed output dims (classes, K, 4) that the exporter left as generated names."""
    proto = onnx.load(str(path))
    for value in proto.graph.output:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in axes.get(value.name, {}) and value.name in shapes:
                dim.Clear()
                dim.dim_value = shapes[value.name][i]
    onnx.save(proto, str(path))


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) uint8 test images: smooth random colour fields (a network's outputs on pure noise are flat)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size[0] // 8), max(2, size[1] // 8), generator=g)
    smooth = nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    noise = torch.rand(n, 3, *size, generator=g) * 0.2
    return ((smooth * 0.8 + noise) * 255).round().clamp(0, 255).to(torch.uint8)


def max_relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """Max |a - e| / max |e| (0 for two empty or all-zero arrays)."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def compare_outputs(model: DeployableModel, session: Any, images: torch.Tensor) -> dict[str, float]:
    """Max relative error of each onnxruntime output against PyTorch on `images`.

    Detection outputs are compared as detection sets (`_compare_detections`).
    """
    with torch.no_grad():
        expected = [t.numpy() for t in model(images)]
    actual = session.run(None, {INPUT_NAME: images.numpy()})
    names = model.output_names
    errors = {}
    if "num_detections" in names:
        return _compare_detections(dict(zip(names, expected)), dict(zip(names, actual)))
    for name, e, a in zip(names, expected, actual):
        if e.dtype.kind in "iu":
            errors[name] = 0.0 if np.array_equal(e, a) else float(np.mean(e != a))  # class maps: fraction differing
        else:
            errors[name] = max_relative_error(e, a)
    return errors


TIE_RTOL = 1e-4


def _compare_detections(exp: dict[str, np.ndarray], act: dict[str, np.ndarray]) -> dict[str, float]:
    """Errors between two padded detection outputs, image by image, entries ranked by score.

    Counts must be equal and the ranked scores close. Labels and boxes are compared rank by rank for the
    entries whose score is not tied (within `TIE_RTOL`) with a neighbour's or with the last kept score:
    among tied candidates NMS and top-K keep either one, by a 1e-7 difference of float summation order.
    """
    if not np.array_equal(exp["num_detections"], act["num_detections"]):
        return {name: float("inf") for name in exp}
    errors = dict.fromkeys(("boxes", "scores", "labels", "num_detections"), 0.0)
    for i, count in enumerate(exp["num_detections"].tolist()):
        if count == 0:
            continue
        order_e, order_a = (
            np.argsort(-exp["scores"][i, :count], kind="stable"),
            np.argsort(-act["scores"][i, :count], kind="stable"),
        )
        se, sa = exp["scores"][i, :count][order_e], act["scores"][i, :count][order_a]
        errors["scores"] = max(errors["scores"], max_relative_error(se, sa))
        gap = TIE_RTOL * np.abs(se).max()
        untied = np.ones(count, bool)
        close = np.abs(np.diff(se)) <= gap
        untied[1:] &= ~close
        untied[:-1] &= ~close
        untied &= se > se[-1] + gap  # a tie with the last kept score may swap with a dropped candidate
        if not untied.any():
            continue
        be, ba = exp["boxes"][i, :count][order_e][untied], act["boxes"][i, :count][order_a][untied]
        le, la = exp["labels"][i, :count][order_e][untied], act["labels"][i, :count][order_a][untied]
        errors["labels"] = max(errors["labels"], float(np.mean(le != la)))
        errors["boxes"] = max(errors["boxes"], max_relative_error(be, ba))
    return errors


def _session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(
    model: DeployableModel, path: str | os.PathLike, image_size: tuple[int, int], *, dynamic_size: bool
) -> None:
    """`torch.onnx.export` of `model` at `image_size` (batch 2), dynamic batch (and H, W), opset 17, to `path`."""
    example = random_images(2, image_size)
    axes, shapes = _dynamic_axes(model, example, dynamic_size)
    # The trace records Python decisions on sizes (a resize skipped at equal size, the MatMul form of a bilinear
    # resize) as constants, and torch warns about each; verify_export then checks the file at a second size.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=list(model.output_names),
            dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    _fix_static_dims(Path(path), axes, shapes)


def verify_export(
    model: DeployableModel, path: str | os.PathLike, image_size: tuple[int, int], *, dynamic_size: bool
) -> dict[str, float]:
    """Onnxruntime vs PyTorch at batch 1 and 3, at `image_size` and (dynamic) a second size; worst errors.

    Raises:
        RuntimeError: onnxruntime's outputs differ from PyTorch's by more than `VERIFY_RTOL` (relative).
    """
    session = _session(Path(path))
    sizes = [tuple(image_size)]
    if dynamic_size:
        sizes.append((image_size[0] + 32, image_size[1] - 16 if image_size[1] > 48 else image_size[1] + 16))
    worst: dict[str, float] = {}
    for size in sizes:
        for batch in (1, 3):
            errors = compare_outputs(model, session, random_images(batch, size, seed=batch))
            for name, err in errors.items():
                worst[name] = max(worst.get(name, 0.0), err)
            bad = {k: v for k, v in errors.items() if v > VERIFY_RTOL}
            if bad:
                raise RuntimeError(
                    f"the exported graph differs from PyTorch at batch {batch}, size {size}: "
                    + ", ".join(f"{k} max rel err {v:.3g}" for k, v in bad.items())
                )
    return worst


def postprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes to keep float in int8: the input's normalization, the task's output part, and what feeds it.

    The exporter names nodes by module path: "/preprocess/..." (uint8 -> normalized float: a cast and
    three element-wise ops on a 3-channel image) and "/outputs/..." (box decoding, softmax, NMS, argmax:
    in 8 bits the boxes would move by whole pixels and the default boxes would be rounded). The
    reshape / concat chains that carry the network's raw outputs into "/outputs/" stay float too, as
    `quantize.float_nodes` keeps the chains to graph outputs (no shared 8-bit scale across all boxes).
    """
    keep = [n.name for n in model.graph.node if n.name.startswith(("/preprocess/", "/outputs/"))]
    inputs = [i for n in model.graph.node if n.name.startswith("/outputs/") for i in n.input]
    return keep + pass_through_feeders(model, inputs, stop=set(keep))


def calibration_batches(datamodule: LightningDataModule, count: int) -> Iterator[np.ndarray]:
    """`count` batches of the training split, read with the evaluation transform, as uint8 (N, 3, H, W).

    The images are spread evenly over the split (a video-like split such as 7-Scenes has runs of near-equal
    frames), in the data's batch size.

    Raises:
        ValueError: `count` < 1, or the training split is empty.
    """
    from tasks.common.deploy.runtime import to_uint8

    if count < 1:
        raise ValueError(f"--calibration_batches must be at least 1, got {count}")
    spec = deployment(task_of_datamodule(datamodule))
    dataset = datamodule.build_split("train")
    dataset.transform = spec.calibration_transform(datamodule)  # deterministic resize + normalize, no augmentation
    if len(dataset) == 0:
        raise ValueError(
            f"the training split of the {datamodule.hparams.dataset} data ({datamodule.hparams.root or 'built in'}) "
            f"is empty: no images to calibrate int8 on"
        )
    batch_size = datamodule.hparams.batch_size
    n = min(len(dataset), count * batch_size)
    indices = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()
    loader = make_loader(Subset(dataset, indices), batch_size, train=False, collate_fn=type(datamodule).collate)
    for batch in loader:
        yield to_uint8(batch["image"]).numpy()


def task_of_datamodule(datamodule: LightningDataModule) -> str:
    """The task of a data module (`tasks.<task>.datamodule`)."""
    return task_of(type(datamodule))


def _json_hparams(module: LightningModule) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    return json.dumps({k: plain(v) for k, v in module.hparams.items() if not str(k).startswith("_")})


@dataclass
class ExportSummary:
    """What `export_module` wrote."""

    path: Path
    task: str
    precision: str
    raw: bool
    inputs: list[tuple[str, str, list]]
    outputs: list[tuple[str, str, list]]
    descriptions: dict[str, str]
    fp32_errors: dict[str, float]
    int8_report: Any = None
    int8_errors: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The printed summary."""
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB): {self.task}, {self.precision}"
            + (", raw head outputs" if self.raw else ""),
            "input:",
        ]
        for name, dtype, dims in self.inputs:
            lines.append(f"  {name}: {dtype} {dims}")
        lines.append(f"  preprocessing: {INPUT_DESCRIPTION}")
        lines.append("outputs:")
        for name, dtype, dims in self.outputs:
            what = self.descriptions.get(name)
            lines.append(f"  {name}: {dtype} {dims}" + (f"  -- {what}" if what else ""))
        errors = ", ".join(f"{k} {v:.1e}" for k, v in self.fp32_errors.items())
        lines.append(f"fp32 onnxruntime vs PyTorch (max relative error): {errors}")
        if self.int8_report is not None:  # quantize.QuantizationReport or qat.QATReport
            lines.append(self.int8_report.format())
        if self.int8_errors:
            errors = ", ".join(f"{k} {v:.2g}" for k, v in self.int8_errors.items())
            lines.append(f"int8 onnxruntime vs its fake-quantized PyTorch model (first calibration batch): {errors}")
        lines += self.notes
        return "\n".join(lines)


def _value_specs(values: Any) -> list[tuple[str, str, list]]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        specs.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
    return specs


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, naming the folder, when `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; give a file name such as {path / 'model.onnx'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the folder {parent} is not writable")
    return path


def export_module(
    module: LightningModule,
    datamodule: LightningDataModule,
    output: str | os.PathLike,
    *,
    int8: bool = False,
    calibration_batches_count: int = 8,
    raw: bool = False,
    calibration: Any = None,
    metadata: dict[str, str] | None = None,
    qat_steps: int = 0,
    qat_lr: float = 1e-5,
    calibration_method: str = "minmax",
    calibration_percentile: float = 99.999,
) -> ExportSummary:
    """Export a task module's deployable graph to `output` (see the module docstring).

    Args:
        module: The task module, with its weights.
        datamodule: The task's data module (image size; calibration images).
        output: The .onnx file; written atomically (a failure leaves no file, an older file survives).
        int8: Quantize to int8 (static QDQ, `tasks.common.deploy.quantize`).
        calibration_batches_count: Training batches to calibrate on.
        raw: Raw head outputs instead of the post-processed ones (detection: no NMS in the graph).
        calibration: Calibration batches instead of the training split's (uint8 (N, 3, H, W) arrays).
        metadata: More metadata entries (e.g. the checkpoint's path).
        qat_steps: With `int8`, reach int8 by this many steps of quantization-aware training on the training
            split (`tasks.common.deploy.qat`) instead of post-training quantization; 0 for PTQ.
        qat_lr: The QAT learning rate.
        calibration_method: Post-training calibration: "minmax" (the default) or "percentile"
            (`tasks.common.deploy.calibration`); QAT initializes its quantizers with NNCF's own.
        calibration_percentile: With "percentile": the percentile of each activation's magnitudes that bounds
            its range.

    Returns:
        What was written.
    """
    from tasks.common.deploy.calibration import check_calibration_method
    from tasks.common.deploy.quantize import quantize_int8  # onnxruntime.quantization: imported when needed

    if qat_steps and not int8:
        raise ValueError("--qat_steps gives an int8 model: add --int8")
    if qat_steps < 0:
        raise ValueError(f"--qat_steps must be 0 (post-training quantization) or more, got {qat_steps}")
    check_calibration_method(calibration_method, calibration_percentile)
    if calibration_method != "minmax" and qat_steps:
        raise ValueError(
            f"--calibration_method {calibration_method} is for post-training quantization: with --qat_steps, NNCF "
            "initializes the quantizers and training sets their ranges"
        )
    output = check_output_path(output)
    task = task_of(type(module))
    spec = deployment(task)
    image_size = spec.example_size(datamodule)
    model = deployable_model(module, image_size, raw=raw)
    meta = {
        "task": task,
        "hparams": _json_hparams(module),
        "class_names": json.dumps(list(getattr(datamodule, "class_names", None) or [])),
        "outputs": "raw" if raw else "deploy",
        "precision": "int8" if int8 else "fp32",
        "quantization": ("qat" if qat_steps else "ptq") if int8 else "none",
        "input": INPUT_DESCRIPTION,
        "image_size": json.dumps(None if spec.dynamic_size else list(image_size)),
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="litedense_export_") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32_path, image_size, dynamic_size=spec.dynamic_size)
        errors = verify_export(model, fp32_path, image_size, dynamic_size=spec.dynamic_size)
        report, int8_errors = None, {}
        final = fp32_path
        if int8:
            batches = (
                calibration if calibration is not None else calibration_batches(datamodule, calibration_batches_count)
            )
            final = Path(tmp) / "int8.onnx"
            if qat_steps:
                report, int8_errors = _export_qat(
                    module, datamodule, model, list(batches), final, qat_steps, qat_lr, image_size, spec.dynamic_size
                )
            else:
                excluded = postprocessing_nodes(onnx.load(str(fp32_path)))
                report = quantize_int8(
                    fp32_path, final, batches, nodes_to_exclude=excluded, calibration_method=calibration_method,
                    calibration_percentile=calibration_percentile,
                )  # fmt: skip
                meta["calibration"] = report.calibration_method
        proto = onnx.load(str(final))
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"litedense.{key}", str(value)
        proto.producer_name = "litedense"
        with atomic_path(output) as tmp_out:
            onnx.save(proto, str(tmp_out))
            onnx.checker.check_model(str(tmp_out))
    summary = ExportSummary(
        path=output, task=task, precision=meta["precision"], raw=raw, inputs=_value_specs(proto.graph.input),
        outputs=_value_specs(proto.graph.output), descriptions=spec.describe_outputs(module), fp32_errors=errors,
        int8_report=report, int8_errors=int8_errors, size_bytes=output.stat().st_size,
    )  # fmt: skip
    if not spec.dynamic_size:
        summary.notes.append(f"height and width are fixed at {list(image_size)} (the data's image size)")
    return summary


def _export_qat(
    module: LightningModule,
    datamodule: LightningDataModule,
    model: DeployableModel,
    calibration: list[np.ndarray],
    path: Path,
    steps: int,
    lr: float,
    image_size: tuple[int, int],
    dynamic_size: bool,
) -> tuple[Any, dict[str, float]]:
    """Quantization-aware training of `model.network`, exported with `model`'s pre- and post-processing.

    The export takes the fp32 export's example size and dynamic axes.

    Returns the `QATReport` and the int8 graph's onnxruntime outputs against its fake-quantized PyTorch model on
    the first calibration batch (integer arithmetic rounds differently: reported, not required to be 0).
    """
    from tasks.common.deploy.qat import quantization_aware_training, quantize_convolution_outputs, requantize_concats
    from tasks.common.deploy.quantize import quantized_graph_forms

    if not calibration:
        raise ValueError("the calibration set is empty: give at least one batch to initialize the quantizers")
    normalized = [model.preprocess(torch.from_numpy(batch)) for batch in calibration]
    datamodule.setup("fit")
    network, report = quantization_aware_training(
        module.deployable(), module.network_loss, normalized, datamodule.train_dataloader(), steps=steps, lr=lr
    )
    qat_model = DeployableModel(network, model.outputs).eval()
    export_onnx(qat_model, path, image_size, dynamic_size=dynamic_size)
    proto = onnx.load(str(path))
    # The same graph forms as post-training quantization's where they apply to NNCF's QDQ graph (the channel
    # padding acts on the float model, which QAT does not pass through).
    changed = requantize_concats(proto) + quantize_convolution_outputs(proto, calibration)
    if any(quantized_graph_forms(proto)) or changed:
        onnx.save(proto, str(path))
    errors = compare_outputs(qat_model, _session(path), torch.from_numpy(calibration[0]))
    return report, errors


def load_checkpoint(module: LightningModule, ckpt_path: str | os.PathLike) -> None:
    """Load a task checkpoint's weights into `module`, with errors naming the file.

    Raises:
        CheckpointError: No such file, not a checkpoint, or another task's (`tasks.common.checkpoints`).
        ValueError: Its weights do not fit `module`'s architecture.
    """
    task = task_of(type(module))
    check_checkpoint(ckpt_path, task)
    ckpt = load_checkpoint_file(ckpt_path)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        hp = module.hparams
        arch = ", ".join(f"{k}={hp[k]}" for k in ("backbone", "head", "num_classes", "output_stride") if k in hp)
        raise ValueError(
            f"the weights in {ckpt_path} do not fit the {task} model built for it ({arch}); was it trained with "
            f"another architecture (a --backbone or --model.* option that differs)? {err}"
        ) from err


def prepare_for_export(model: LightningModule, datamodule: LightningDataModule, ckpt_path: str | None) -> None:
    """What every export format does first: load the checkpoint, or say there is none; size the head.

    The checkpoint is checked by `load_checkpoint`; a model that sizes its head at setup gets one built from
    the data module's classes.
    """
    if ckpt_path is not None:
        load_checkpoint(model, ckpt_path)
    else:
        print("no --ckpt_path: exporting the model as configured (its initial or pretrained weights)")
    if getattr(model, "sized_by_data", False) and model.head is None:
        datamodule.setup("validate")
        model.build_head(datamodule.num_classes)


class DeployTrainer(Trainer):
    """Lightning's Trainer with an `export` method, so that `export` is a LightningCLI subcommand like `fit`."""

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        output: str = "model.onnx",
        int8: bool = False,
        calibration_batches: int = 8,
        raw: bool = False,
        format: str = "onnx",
        qat_steps: int = 0,
        qat_lr: float = 1e-5,
        calibration_method: str = "minmax",
        calibration_percentile: float = 99.999,
    ) -> Any:
        """Export a checkpoint to ONNX (fp32, or int8 with --int8), with pre- and post-processing inside.

        Args:
            model: The task module (rebuilt from the checkpoint's hyperparameters by the CLI).
            datamodule: The task's data (image size, calibration images).
            ckpt_path: The checkpoint; None exports the model as configured (initial or pretrained weights).
            output: The .onnx file to write (atomically).
            int8: Quantize to int8, calibrated on the training split.
            calibration_batches: Training batches (of data.batch_size images) to calibrate int8 on.
            raw: Export the raw head outputs (detection: offsets, logits and default boxes; no NMS).
            format: "onnx", or "tflite" (LiteRT, static NHWC uint8 input; needs the optional extra
                `pip install -e ".[tflite]"`; detection files hold the raw outputs, since NMS does not convert).
            qat_steps: With --int8: reach int8 by this many steps of quantization-aware training (NNCF, on the
                training split, `tasks.common.deploy.qat`) instead of post-training quantization (0). ONNX only.
            qat_lr: The quantization-aware training's learning rate (AdamW, constant).
            calibration_method: How post-training int8 sets each activation's range from the calibration
                batches: "minmax" (the extremes seen) or "percentile" (bounded by the
                --calibration_percentile-th percentile of its magnitudes: the rarest extremes clipped);
                docs/deploy.md "Calibration" compares them. ONNX post-training quantization only.
            calibration_percentile: With "percentile": the percentile of each activation's magnitudes that
                bounds its range.

        Returns:
            The export summary (`ExportSummary`, or `TFLiteSummary` for tflite).
        """
        if format not in ("onnx", "tflite"):
            raise ValueError(f"--format must be 'onnx' or 'tflite', got {format!r}")
        if format == "tflite":
            if qat_steps:
                raise ValueError("--qat_steps is for --format onnx: the TFLite export quantizes after training only")
            if calibration_method != "minmax":
                raise ValueError(
                    f"--calibration_method {calibration_method} is for --format onnx: the TFLite export calibrates "
                    "with litert-torch's own observers"
                )
            from tasks.common.deploy.tflite_export import export_tflite_checkpoint

            return export_tflite_checkpoint(
                model, datamodule, ckpt_path, output, int8=int8, calibration_batches=calibration_batches
            )
        prepare_for_export(model, datamodule, ckpt_path)
        summary = export_module(
            model, datamodule, output, int8=int8, calibration_batches_count=calibration_batches, raw=raw,
            metadata={"checkpoint": str(ckpt_path)} if ckpt_path else None, qat_steps=qat_steps, qat_lr=qat_lr,
            calibration_method=calibration_method, calibration_percentile=calibration_percentile,
        )  # fmt: skip
        print(summary.format())
        return summary
