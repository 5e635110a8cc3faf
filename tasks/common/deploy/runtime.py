"""Running an exported file: an onnxruntime session with checked inputs, and the task modules on top of it.

`OnnxModel(path)` opens a file written by `python -m tasks.<task> export` (fp32 or int8), reads what the
export recorded in the file's metadata (task, the module's hyperparameters, class names, raw or
post-processed outputs) and runs uint8 (N, 3, H, W) batches, refusing with a clear error an input of
another dtype, rank, channel count or (for fixed-size graphs) size.

`load_onnx_module(path, task)` builds the task's evaluator, e.g. `OnnxSegmentationModule` from
`tasks/segmentation/deploy.py`: the task's own LightningModule with `forward` replaced by the session
(`OnnxEvaluation`), so `validate`, `test` and `predict` run the task's own metric and writer code on what
the exported file computes: `python -m tasks.<task> validate --onnx model.onnx [--config ...]`.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks.common.data import denormalize

META_PREFIX = "litedense."


def to_uint8(images: Tensor) -> Tensor:
    """Normalized (N, 3, H, W) float images (the data modules' batches) -> the uint8 pixels they came from.

    Exact for images normalized from uint8 (every data module's transforms resize in uint8, then normalize):
    the float round trip is off by far less than half a grey level, and rounding removes it.
    """
    return (denormalize(images) * 255.0).round_().to(torch.uint8)


def _dims(shape: list) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in shape]


class OnnxModel:
    """An exported litedense model in an onnxruntime session.

    Args:
        path: The .onnx file.
        threads: Intra-op threads (None: onnxruntime's default).
        providers: Execution providers (default: CPU).

    Attributes:
        task: "depth", "segmentation" or "detection".
        hparams: The exported module's hyperparameters.
        class_names: The data's class names at export (may be empty).
        raw: Whether the graph returns the raw head outputs (detection `--raw`).
        precision: "fp32" or "int8".
        input_name: The image input's name; `input_shape` its dims (ints, or names of dynamic dims).
        output_names: The graph outputs, in order.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not an ONNX model written by litedense's export.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, providers: list | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no exported model at {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # noqa: BLE001 -- onnxruntime raises its own exception types
            raise ValueError(f"{self.path} is not an ONNX model onnxruntime can load: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if f"{META_PREFIX}task" not in meta:
            raise ValueError(f"{self.path} has no litedense metadata: export it with `python -m tasks.<task> export`")
        self.metadata = {k.removeprefix(META_PREFIX): v for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.task = self.metadata["task"]
        self.hparams: dict[str, Any] = json.loads(self.metadata.get("hparams", "{}"))
        self.class_names: list[str] = json.loads(self.metadata.get("class_names", "[]"))
        self.raw = self.metadata.get("outputs") == "raw"
        self.precision = self.metadata.get("precision", "fp32")
        (image,) = self.session.get_inputs()
        self.input_name, self.input_type, self.input_shape = image.name, image.type, _dims(image.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def describe_input(self) -> str:
        """E.g. "'image' uint8 [batch, 3, 320, 320]"."""
        return f"'{self.input_name}' {self.input_type.removeprefix('tensor(').rstrip(')')} {self.input_shape}"

    def check_input(self, images: np.ndarray) -> None:
        """Raise a ValueError naming the file when `images` does not fit the graph's input."""
        if not isinstance(images, np.ndarray):
            raise TypeError(f"{self.path} takes a numpy array, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(
                f"{self.path} expects {self.describe_input()} (RGB pixels 0..255, not normalized); "
                f"got dtype {images.dtype}"
            )
        fits = images.ndim == len(self.input_shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(self.input_shape, images.shape)
        )
        if not fits:
            raise ValueError(
                f"{self.path} expects {self.describe_input()}; got shape {list(images.shape)}"
                + (
                    " (the graph's height and width are fixed at export: set the data's image size to match, "
                    "or export again at this size)"
                    if images.ndim == 4 and all(isinstance(d, int) for d in self.input_shape[2:])
                    else ""
                )
            )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, H, W) uint8 -> {output name: array}."""
        self.check_input(images)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: images})))


class OnnxEvaluation:
    """Mixin placed before a task's LightningModule: `forward` runs the exported file instead of the network.

    A subclass implements `onnx_forward(outputs)`, which turns the graph's outputs (torch tensors, on the
    batch's device) into what the task module's `forward` returns, so the module's loss, metrics and
    `predict_step` run unchanged. The PyTorch network the module builds is never run.
    """

    onnx_model: OnnxModel

    def forward(self, images: Tensor) -> Any:
        """Normalized (N, 3, H, W) batch images -> `onnx_forward` of the graph's outputs on them."""
        pixels = to_uint8(images).cpu().numpy()
        outputs = {k: torch.from_numpy(v).to(images.device) for k, v in self.onnx_model(pixels).items()}
        return self.onnx_forward(outputs)

    def onnx_forward(self, outputs: dict[str, Tensor]) -> Any:
        """What the task module's `forward` returns, from the graph's outputs."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """An exported model is not trainable."""
        raise RuntimeError(f"{self.onnx_model.path} is an exported model: fit a checkpoint instead")


def load_onnx_module(path: str | os.PathLike, task: str | None = None, *, threads: int | None = None) -> Any:
    """The task's evaluator module on an exported file (see the module docstring).

    Args:
        path: The .onnx file.
        task: The task that runs it; a file of another task is an error.
        threads: onnxruntime intra-op threads.

    Returns:
        An `OnnxEvaluation` subclass of the task's LightningModule, built with the exported hyperparameters.

    Raises:
        ValueError: The file belongs to another task, or is not a litedense export.
    """
    model = OnnxModel(path, threads=threads)
    if task is not None and model.task != task:
        raise ValueError(
            f"{model.path} is a {model.task} model, not a {task} one: run it with `python -m tasks.{model.task}`"
        )
    deployment = importlib.import_module(f"tasks.{model.task}.deploy").DEPLOYMENT
    hparams = {k: v for k, v in model.hparams.items() if not k.startswith("_")}
    hparams["pretrained"] = False  # the weights are in the file; never load or download others
    module = deployment.onnx_module_class(**hparams)
    module.onnx_model = model
    module.eval()
    return module
