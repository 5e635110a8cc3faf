"""The README's export table: every registered backbone x each task's default head, fp32 and int8 ONNX.

For each pair the full deployable graph (uint8 input, normalization, task outputs; detection with NMS) is
exported with `tasks.common.deploy.onnx_export.export_module` from a randomly initialized model on the
synthetic data at a small size, and:

- fp32: onnxruntime's outputs against PyTorch's, worst relative error over batch 1 and 3 and, for
  dynamic-size graphs, two input sizes (what `export` checks; detection compares the detections after NMS,
  with the random head's scores spread apart so that NMS has no near-ties to order either way);
- int8: quantized (`--int8`, 2 calibration batches of the synthetic training split) and run by onnxruntime;
  its relative error against PyTorch is shown for depth and segmentation logits (random weights: an
  indication that the graph is whole, not an accuracy figure; docs/deploy.md has trained models').

    python -m tools.export_table [--readme README.md] [--backbones mobilenet_v2 ghostnet]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from backbones import list_backbones
from tools.readme import replace_generated_block

SIZE = 64


def _task_setup(task: str, backbone: str):
    from tasks.depth.datamodule import DepthDataModule
    from tasks.depth.module import DepthModule
    from tasks.detection.datamodule import DetectionDataModule
    from tasks.detection.module import DetectionModule
    from tasks.segmentation.datamodule import SegmentationDataModule
    from tasks.segmentation.module import SegmentationModule

    small = {"synthetic_train_size": 4, "synthetic_val_size": 2, "batch_size": 2}
    if task == "depth":
        return DepthModule(backbone=backbone), DepthDataModule(image_size=(SIZE, SIZE), **small)
    if task == "segmentation":
        data = SegmentationDataModule(synthetic_size=SIZE, crop_size=(SIZE, SIZE), **small)
        return SegmentationModule(backbone=backbone, num_classes=data.num_classes), data
    module = DetectionModule(backbone=backbone, num_classes=4, extra_channels=[32, 32, 16, 16])
    # An untrained head scores every box of a class alike, and NMS / top-K would then order near-ties by
    # 1e-7 differences either way (tests/tasks/deploy/test_graph.py does the same): spread them.
    with torch.no_grad():
        for predictor in (*module.head.class_predictors, *module.head.box_predictors):
            predictor[-1].weight.mul_(20.0)
            predictor[-1].bias.normal_(0.0, 1.0)
    return module, DetectionDataModule(image_size=SIZE, **small)


def _int8_error(summary_path: Path, module, task: str) -> str:
    from tasks.common.deploy.onnx_export import deployable_model, max_relative_error, random_images
    from tasks.common.deploy.runtime import OnnxModel

    if task == "detection":
        return "runs"
    images = random_images(2, (SIZE, SIZE))
    with torch.no_grad():
        expected = deployable_model(module, (SIZE, SIZE))(images)[0].numpy()
    actual = OnnxModel(summary_path)(images.numpy())["logits" if task == "segmentation" else "depth"]
    return f"{max_relative_error(expected, actual):.1e}"


def check(backbone: str, task: str) -> tuple[str, str]:
    """(fp32 cell, int8 cell) for one backbone and task."""
    from tasks.common.deploy.onnx_export import export_module

    torch.manual_seed(0)
    try:
        module, data = _task_setup(task, backbone)
    except Exception as err:  # noqa: BLE001 -- a net that cannot take the task's head: say so in the table
        return f"no model: {type(err).__name__}", ""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            summary = export_module(module, data, Path(tmp) / "fp32.onnx")
            fp32 = f"yes, {max(summary.fp32_errors.values()):.1e}"
        except Exception as err:  # noqa: BLE001 -- a failed export is a table entry, not a crash
            return f"**fails**: {type(err).__name__}: {str(err).splitlines()[0][:80]}", ""
        try:
            export_module(module, data, Path(tmp) / "int8.onnx", int8=True, calibration_batches_count=2)
            int8 = f"yes, {_int8_error(Path(tmp) / 'int8.onnx', module, task)}"
        except Exception as err:  # noqa: BLE001
            int8 = f"**fails**: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
    return fp32, int8


HEADS = {"depth": "nnconv5", "segmentation": "deeplabv3_mobile", "detection": "ssdlite"}


def build_table(backbones: Sequence[str]) -> str:
    """The markdown table."""
    header = "| backbone | " + " | ".join(f"{t} ({h}) fp32 | int8" for t, h in HEADS.items()) + " |"
    lines = [header, "|---|" + "---|---|" * len(HEADS)]
    for name in backbones:
        cells = []
        for task in HEADS:
            cells += list(check(name, task))
            print(f"{name} {task}: {cells[-2]} / {cells[-1]}", flush=True)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and write it into the README's export-table block)."""
    parser = argparse.ArgumentParser(prog="python -m tools.export_table", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=None, help="also write the table into this README's export-table block")
    parser.add_argument("--backbones", nargs="*", default=None, help="only these backbones (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    everything = list_backbones()
    table = build_table(args.backbones or everything)
    if args.backbones:
        table += (
            f"\n\n({len(args.backbones)} of the {len(everything)} registered backbones; "
            "`python -m tools.export_table` checks them all, `pytest -m slow tests/tasks/deploy` too.)"
        )
    print(table)
    if args.readme:
        replace_generated_block(args.readme, "export-table", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
