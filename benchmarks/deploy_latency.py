"""Deployed latency: eager PyTorch vs onnxruntime fp32 vs onnxruntime int8, ours vs torchvision.

For each task's default model and our MobileNetV3-Large configurations of torchvision's models (LR-ASPP,
DeepLabv3, SSDLite320), and those torchvision models: the raw network (backbone + head, no normalization, no
NMS) exported to ONNX (TorchScript exporter, opset 17, dynamic batch) in a temporary folder, quantized with
`tasks.common.deploy.quantize.quantize_int8` calibrated on real training images of the task
(`--data`, default ../shared/data), then timed at each batch size: every model x runtime once per round,
round-robin, so that load from other processes hits all alike; the table gives medians and ratios, and the
int8-vs-fp32 agreement on held-out real images (segmentation: argmax agreement; depth: mean relative error;
detection: relative L2 error of the class logits and of the box offsets).

    OMP_NUM_THREADS=1 python benchmarks/deploy_latency.py --threads 2 --repeats 10 --batch 1 8

Models built with random weights, except MobileNetV2 backbones, which load the ImageNet file of
`--weights` when present (realistic activation ranges for calibration). The builders are small functions
(`build_*`) so that the deployable graph (normalization, decode, NMS) can replace the raw network later.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
TORCHVISION_DEEPLAB_HEAD = {"rates": [12, 24, 36], "dropout": 0.5, "extra_conv": True}


# ---- model builders: (N, 3, H, W) normalized images -> raw head tensors ------------------------------------


def _first_class(module, *names):
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise ImportError(f"none of {names} in {module.__name__}")


def build_ours_segmentation(weights: str | bool, backbone: str = "mobilenet_v2", **kwargs) -> nn.Module:
    import tasks.segmentation.module as seg

    cls = _first_class(seg, "SegmentationModule", "SegmentationModel")
    return cls(num_classes=21, backbone=backbone, pretrained=weights, **kwargs)


def build_ours_depth(weights: str | bool) -> nn.Module:
    import tasks.depth.module as depth

    return _first_class(depth, "DepthModule", "DepthModel")(backbone="mobilenet_v2", pretrained=weights)


def build_ours_detection(weights: str | bool, backbone: str = "mobilenet_v2", **kwargs) -> nn.Module:
    import tasks.detection.module as det

    return _first_class(det, "DetectionModule", "SSDLiteModule")(
        backbone=backbone, num_classes=91, pretrained=weights, **kwargs
    )


class TorchvisionSegmentation(nn.Module):
    """torchvision's segmentation models return {"out": logits}; export the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, K, H, W)."""
        return self.model(x)["out"]


class TorchvisionSSDRaw(nn.Module):
    """torchvision's SSDLite without its transform and post-processing: backbone + head outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) -> box offsets (N, A, 4), class logits (N, A, C)."""
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]


def build_torchvision_lraspp() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return TorchvisionSegmentation(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21))


def build_torchvision_deeplabv3() -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    return TorchvisionSegmentation(model)


def build_torchvision_ssdlite() -> nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    return TorchvisionSSDRaw(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None))


@dataclass
class Case:
    """One model of the table; `arch` pairs ours with torchvision's at equal architecture."""

    name: str
    task: str
    arch: str
    build: Callable[[], nn.Module]
    size: int


def cases(weights: str | bool, sizes: dict[str, int]) -> list[Case]:
    seg, det, dep = sizes["segmentation"], sizes["detection"], sizes["depth"]
    ssd_v3 = {"backbone_kwargs": {"reduced_tail": True}, "reduce_lowest": False}  # torchvision's configuration
    return [
        Case("ours depth default (mobilenet_v2 + nnconv5)", "depth", "", lambda: build_ours_depth(weights), dep),
        Case(
            "ours segmentation default (mobilenet_v2 + deeplabv3_mobile)",
            "segmentation", "", lambda: build_ours_segmentation(weights), seg,
        ),
        Case(
            "ours detection default (SSDLite mobilenet_v2)",
            "detection", "", lambda: build_ours_detection(weights), det,
        ),
        Case(
            "ours LR-ASPP mobilenet_v3_large", "segmentation", "lraspp",
            lambda: build_ours_segmentation(False, "mobilenet_v3_large", head="lraspp"), seg,
        ),
        Case("torchvision LR-ASPP MobileNetV3-L", "segmentation", "lraspp", build_torchvision_lraspp, seg),
        Case(
            "ours DeepLabv3 mobilenet_v3_large", "segmentation", "deeplabv3",
            lambda: build_ours_segmentation(
                False, "mobilenet_v3_large", head="deeplabv3", head_kwargs=TORCHVISION_DEEPLAB_HEAD
            ),
            seg,
        ),
        Case("torchvision DeepLabv3 MobileNetV3-L", "segmentation", "deeplabv3", build_torchvision_deeplabv3, seg),
        Case(
            "ours SSDLite mobilenet_v3_large", "detection", "ssdlite",
            lambda: build_ours_detection(False, "mobilenet_v3_large", **ssd_v3), det,
        ),
        Case("torchvision SSDLite320 MobileNetV3-L", "detection", "ssdlite", build_torchvision_ssdlite, det),
    ]  # fmt: skip


# ---- real images ----------------------------------------------------------------------------------------------


def image_paths(data: Path, task: str, split: str) -> list[Path]:
    """Training (`split="train"`) or held-out images of the task's sample dataset (../shared/data README)."""
    if task == "segmentation":
        root = data / "segmentation/camvid"
        lines = (root / f"{split}.txt").read_text().split("\n") if (root / f"{split}.txt").exists() else []
        return [root / line.split()[0] for line in lines if line.strip()]
    if task == "detection":
        return sorted((data / f"detection/coco_mini/{split}2017").glob("*.jpg"))
    frames = sorted((data / "depth/sevenscenes").glob("*.color.jpg"))
    return frames[::7] if split == "train" else frames[3::37]  # disjoint subsets of the 300 frames


def load_images(paths: list[Path], size: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` images, resized to size x size, normalized, as (1, 3, size, size) float32; random if no data."""
    from PIL import Image

    if not paths:
        print(f"  (no sample images found: {count} random inputs instead; see --data)")
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(count)]
    out = []
    for path in paths[:count]:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        out.append(((x - MEAN) / STD).astype(np.float32))
    return out


# ---- export, sessions, agreement -----------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: Tensor, path: Path) -> list[str]:
    """Export with the TorchScript exporter (`dynamo=False`: the dynamo exporter needs `onnxscript`, which
    litedense does not install), opset 17, dynamic batch. Returns the output names."""
    with torch.inference_mode():
        outputs = model(example)
    n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names = [f"output_{i}" for i in range(n_out)]
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=17, input_names=["images"], output_names=names,
        dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
    )  # fmt: skip
    return names


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Round-robin over many sessions: a session's worker threads otherwise keep spinning after its run and take
    # the cores from the next model timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def agreement(task: str, fp32: list[np.ndarray], int8: list[np.ndarray]) -> str:
    if task == "segmentation":
        return f"argmax {100 * np.mean(fp32[0].argmax(1) == int8[0].argmax(1)):.1f}%"
    if task == "depth":
        return f"rel err {100 * np.mean(np.abs(int8[0] - fp32[0]) / np.maximum(np.abs(fp32[0]), 1e-6)):.2f}%"
    rel = [np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(fp32, int8)]
    return f"L2 box {100 * rel[0]:.1f}%, cls {100 * rel[1]:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=None, help="input side for every model (default per task)")
    parser.add_argument("--calibration", type=int, default=8, help="calibration images per model")
    parser.add_argument("--only", default="", help="substring filter on model names")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LITEDENSE_TEST_DATA", ROOT.parent / "shared/data"))
    )
    weights_dir = Path(os.environ.get("LITEDENSE_TEST_WEIGHTS", ROOT.parent / "shared/weights"))
    parser.add_argument("--weights", type=Path, default=weights_dir / "mobilenet_v2-b0353104.pth")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from tasks.common.deploy.quantize import quantize_int8

    sizes = {"segmentation": 512, "detection": 320, "depth": 224}
    if args.size:
        sizes = dict.fromkeys(sizes, args.size)
    weights = str(args.weights) if args.weights.is_file() else False
    selected = [c for c in cases(weights, sizes) if args.only in c.name]
    print(f"threads={args.threads} repeats={args.repeats} mobilenet_v2 weights={weights or 'random'}")

    runners: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="litedense_deploy_") as tmp:
        for case in selected:
            print(f"- {case.name}: export, calibrate on {args.calibration} images, quantize", flush=True)
            model = case.build().eval()
            fp32_path, int8_path = Path(tmp) / f"{len(runners)}.onnx", Path(tmp) / f"{len(runners)}_int8.onnx"
            example = torch.randn(1, 3, case.size, case.size)
            export_onnx(model, example, fp32_path)
            calib = load_images(image_paths(args.data, case.task, "train"), case.size, args.calibration, 1)
            report = quantize_int8(fp32_path, int8_path, iter(calib))
            sessions = {"fp32": session(fp32_path, args.threads), "int8": session(int8_path, args.threads)}
            held_out = load_images(image_paths(args.data, case.task, "val"), case.size, 1, 2)[0]
            outs = {k: s.run(None, {"images": held_out}) for k, s in sessions.items()}
            with torch.inference_mode():
                eager = model(torch.from_numpy(held_out))
            eager = [t.numpy() for t in (eager if isinstance(eager, (tuple, list)) else [eager])]
            export_err = max(
                float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(eager, outs["fp32"])
            )
            runners[case.name] = {
                "case": case, "model": model, "sessions": sessions, "export_err": export_err,
                "agree": agreement(case.task, outs["fp32"], outs["int8"]), "float_nodes": len(report.float_nodes),
            }  # fmt: skip

        rows = []
        for batch in args.batch:
            calls: dict[tuple[str, str], Callable[[], object]] = {}
            for name, r in runners.items():
                x = np.random.default_rng(batch).standard_normal((batch, 3, r["case"].size, r["case"].size))
                x = x.astype(np.float32)
                xt = torch.from_numpy(x)

                def eager(m=r["model"], xt=xt):
                    with torch.inference_mode():
                        return m(xt)

                calls[(name, "eager")] = eager
                for kind, s in r["sessions"].items():
                    calls[(name, kind)] = lambda s=s, x=x: s.run(None, {"images": x})
            times: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
            for fn in calls.values():
                fn()  # warm-up
            for _ in range(args.repeats):
                for key, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            med = {k: 1000 * statistics.median(v) for k, v in times.items()}
            for name, r in runners.items():
                pair = next(
                    (
                        n
                        for n, o in runners.items()
                        if o["case"].arch == r["case"].arch and n != name and r["case"].arch
                    ),
                    None,
                )
                eager_ms, fp32_ms, int8_ms = (med[(name, k)] for k in ("eager", "fp32", "int8"))
                vs = ""
                if pair and name.startswith("ours"):
                    vs = f"{fp32_ms / med[(pair, 'fp32')]:.2f}x / {int8_ms / med[(pair, 'int8')]:.2f}x"
                rows.append(
                    f"| {name} | {r['case'].size} | {batch} | {eager_ms:.1f} | {fp32_ms:.1f} | {int8_ms:.1f} | "
                    f"{fp32_ms / eager_ms:.2f}x | **{int8_ms / fp32_ms:.2f}x** | {vs} | {r['agree']} | "
                    f"{r['export_err']:.1e} |"
                )
    print(
        "\n| model | size | batch | eager (ms) | ort fp32 (ms) | ort int8 (ms) | fp32 / eager | int8 / fp32 | "
        "ours / torchvision (fp32 / int8) | int8 vs fp32 | fp32 export err |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
