"""TFLite fp32 vs int8 for each task's default model: file size, LiteRT interpreter latency, int8 agreement.

    OMP_NUM_THREADS=1 python benchmarks/tflite_latency.py --threads 2 --repeats 20

Needs the optional extra (`pip install -e ".[tflite]"`). Each default model (MobileNetV2 backbone with the
ImageNet file of `--weights` when present, random heads) is exported by `tasks.common.deploy.tflite_export`
at one static size (NHWC uint8 input, batch 1), int8 calibrated on `--calibration` real training images of
the task's sample dataset (`--data`: CamVid, COCO-mini, 7-Scenes) and compared with fp32 on a held-out image.
The two files are timed round-robin in the LiteRT interpreter (XNNPACK, `--threads` threads), median of
`--repeats` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.common.deploy.tflite_export import Interpreter, export_tflite

SIZES = {"depth": (224, 224), "segmentation": (512, 512), "detection": (320, 320)}


def build(task: str, weights: str | bool):
    torch.manual_seed(0)
    if task == "depth":
        from tasks.depth.module import DepthModule

        return DepthModule(backbone="mobilenet_v2", pretrained=weights)
    if task == "segmentation":
        from tasks.segmentation.module import SegmentationModule

        return SegmentationModule(num_classes=21, backbone="mobilenet_v2", pretrained=weights)
    from tasks.detection.module import DetectionModule

    return DetectionModule(num_classes=91, backbone="mobilenet_v2", pretrained=weights)


def image_paths(data: Path, task: str, split: str) -> list[Path]:
    if task == "segmentation":
        lines = (data / "segmentation/camvid" / f"{split}.txt").read_text().splitlines()
        return [data / "segmentation/camvid" / line.split()[0] for line in lines if line.strip()]
    if task == "detection":
        return sorted((data / f"detection/coco_mini/{split}2017").glob("*.jpg"))
    frames = sorted((data / "depth/sevenscenes").glob("*.color.jpg"))
    return frames[::7] if split == "train" else frames[3::37]  # disjoint subsets of the 300 frames


def load_uint8(paths: list[Path], size: tuple[int, int], count: int) -> list[np.ndarray]:
    """`count` images spread over `paths`, resized to `size`, as uint8 (1, 3, H, W)."""
    picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count).round()]
    out = []
    for path in picks:
        image = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        out.append(np.asarray(image).transpose(2, 0, 1)[None].copy())
    return out


def agreement(task: str, fp32: dict, int8: dict) -> str:
    if task == "segmentation":
        return f"argmax {100 * np.mean(fp32['classes'] == int8['classes']):.1f}%"
    if task == "depth":
        a, b = fp32["depth"], int8["depth"]
        return f"mean rel err {100 * np.mean(np.abs(b - a) / np.maximum(np.abs(a), 1e-6)):.2f}%"
    rel = [np.linalg.norm(int8[k] - fp32[k]) / np.linalg.norm(fp32[k]) for k in ("box_regression", "cls_logits")]
    return f"L2 box {100 * rel[0]:.1f}%, cls {100 * rel[1]:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", default="../shared/weights/mobilenet_v2-b0353104.pth")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=8, help="calibration images per model")
    parser.add_argument("--tasks", nargs="+", default=list(SIZES))
    args = parser.parse_args()
    weights = args.weights if Path(args.weights).is_file() else False
    header = (
        "| task (default model) | size | fp32 MB | int8 MB | fp32 (ms) | int8 (ms) | int8 / fp32 | int8 vs fp32 "
        "| fp32 vs PyTorch |\n|---|---|---:|---:|---:|---:|---:|---|---:|"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="tflite_latency_") as tmp:
        for task in args.tasks:
            size = SIZES[task]
            module = build(task, weights)
            calib = load_uint8(image_paths(args.data, task, "train"), size, args.calibration)
            held = load_uint8(image_paths(args.data, task, "val"), size, 1)[0].transpose(0, 2, 3, 1).copy()  # NHWC
            print(f"- {task}: export fp32 and int8 at {size}", flush=True)
            fp32 = export_tflite(module, Path(tmp) / f"{task}_fp32.tflite", size)
            int8 = export_tflite(module, Path(tmp) / f"{task}_int8.tflite", size, int8=True, calibration=calib)
            runners = [Interpreter(fp32.path, args.threads), Interpreter(int8.path, args.threads)]
            outs = [r(held) for r in runners]
            times: list[list[float]] = [[], []]
            for r in runners:
                r.latency_ms(held, repeats=1, warmup=3)
            for _ in range(args.repeats):  # round-robin: both files see the same machine load
                for i, r in enumerate(runners):
                    start = time.perf_counter()
                    r(held)
                    times[i].append((time.perf_counter() - start) * 1e3)
            med = [statistics.median(t) for t in times]
            err = max(v for k, v in fp32.fp32_errors.items() if k != "detections")
            rows.append(
                f"| {task} | {size[0]}x{size[1]} | {fp32.size_bytes / 1e6:.2f} | {int8.size_bytes / 1e6:.2f} | "
                f"{med[0]:.1f} | {med[1]:.1f} | **{med[1] / med[0]:.2f}x** | {agreement(task, *outs)} | {err:.1e} |"
            )
            print(header, *rows, sep="\n", flush=True)  # the table so far: a later failure keeps these rows


if __name__ == "__main__":
    main()
