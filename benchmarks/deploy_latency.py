"""Deployed latency: eager PyTorch vs onnxruntime fp32 vs onnxruntime int8, ours vs torchvision.

Every model is timed as deployed: the graph `python -m tasks.<task> export` writes
(`tasks.common.deploy.onnx_export.export_module`: uint8 RGB in, normalization inside, the task's outputs out:
depth map; logits + argmax class map; decoded boxes after NMS, padded to K per image), fp32 and int8 (the
same call with `int8=True`: `quantize_int8` with the export's float-node rule, calibrated on real training
images of the task from `--data`, default ../shared/data). "eager" is the same `DeployableModel` run by
PyTorch. torchvision's models of equal architecture (SSDLite320, LR-ASPP and DeepLabv3 MobileNetV3-L) are
wrapped in the same `DeployableModel` (our `ImagePreprocess` and our task output part: argmax class map;
for SSDLite our decode + per-class top-k + NMS on torchvision's own anchors and head outputs, with the same
thresholds) and exported, verified and quantized with the same functions (`export_onnx`, `verify_export`,
`postprocessing_nodes`, `quantize_int8`). What differs from torchvision's own pipeline: its
`GeneralizedRCNNTransform` (resize, mean/std 0.5) and its postprocess are not used; resizing stays outside
every graph. All models x runtimes are timed once per round, round-robin over the batch sizes, so that load
from other processes hits all alike; the table gives medians and, for the ratios, the median of the per-round
ratios (the two calls of a ratio run seconds apart), and int8-vs-fp32 agreement on
held-out real images (segmentation: class-map agreement; depth: mean relative error; detection: mean |score
difference| of the top-10 detections).

    OMP_NUM_THREADS=1 python benchmarks/deploy_latency.py --threads 2 --repeats 10 --batch 1 8

Each timed call is one run by default, so every run starts after the other models' runs: caches hold the other
models' weights and activations, as in an application that does other work between frames. `--back-to-back K`
times K consecutive runs per call instead (the model's weights stay in cache), which favours the fp32 graphs,
whose weights are 4x larger: the int8 / fp32 ratios come out higher (measured in docs/deploy.md).

Models are built with random weights, except MobileNetV2 backbones, which load the ImageNet file of
`--weights` when present (realistic activation ranges for calibration). The random-init MobileNetV3 models
(ours and torchvision's) get batch-norm statistics measured on their calibration images
(`recalibrate_batch_norm`): with the init statistics torchvision's activations vanish (its SSDLite head sees
features of ~1e-14, every class score ties, and its top-k ran 6x faster on those ties than on real scores,
which made torchvision's fp32 SSDLite graph look 1.13-1.29x faster than ours in earlier tables). Our SSDLite
MobileNetV3-L holds torchvision's weights (`load_torchvision_ssdlite`), so both detection graphs do the
same post-processing work.
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
from types import SimpleNamespace

import numpy as np
import onnx
import torch
from _torchvision_pairs import (
    TorchvisionSegmentationNetwork,
    TorchvisionSSDNetwork,
    ours_ssdlite_in_torchvision_config,
    recalibrate_batch_norm,
)
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TORCHVISION_DEEPLAB_HEAD = {"rates": [12, 24, 36], "dropout": 0.5, "extra_conv": True}
# Detection score threshold for ours and torchvision's alike. The heads have random weights: their softmax is
# close to uniform (1/91 = 0.011), so at the module's default 0.01 most of the 90 x 300 candidates would enter
# NMS, a cost no trained model has; at 0.2 few do (with the recalibrated statistics, 0, 0, 21 and 0 on four
# held-out COCO-mini images, the same for ours and torchvision's: same weights), so the table times network +
# decode + top-k + NMS on a handful of candidates.
DETECTION_SCORE_THRESH = 0.2

# ---- model builders: our task modules; torchvision's as DeployableModel ------------------------------------


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
        backbone=backbone, num_classes=91, pretrained=weights, score_thresh=DETECTION_SCORE_THRESH, **kwargs
    )


def _torchvision_segmentation(model: nn.Module, size: int) -> nn.Module:
    from tasks.common.deploy.graph import DeployableModel
    from tasks.segmentation.deploy import SegmentationOutputs

    return DeployableModel(TorchvisionSegmentationNetwork(model), SegmentationOutputs(21)).eval()


def build_torchvision_lraspp(size: int) -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    return _torchvision_segmentation(model, size)


def build_torchvision_deeplabv3(size: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    return _torchvision_segmentation(model, size)


def torchvision_ssdlite_network(images: np.ndarray) -> nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large, random init, batch norm recalibrated on `images`."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    recalibrate_batch_norm(TorchvisionSSDNetwork(model), images)
    return model.eval()


def build_torchvision_ssdlite(model: nn.Module, size: int) -> nn.Module:
    """torchvision's network + our decode / top-k / NMS (`DetectionOutputs`) on its own anchors for `size`."""
    from torchvision.models.detection.image_list import ImageList

    from tasks.common.deploy.graph import DeployableModel
    from tasks.detection.deploy import DetectionOutputs

    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        anchors = model.anchor_generator(ImageList(x, [(size, size)]), list(model.backbone(x).values()))[0]
    hp = ours_detection_thresholds()
    outputs = DetectionOutputs(anchors, (size, size), activation="softmax", **hp)
    return DeployableModel(TorchvisionSSDNetwork(model), outputs).eval()


def build_ours_ssdlite_like_torchvision(model: nn.Module) -> nn.Module:
    """Our SSDLite MobileNetV3-L in torchvision's configuration, holding the same weights as `model`."""
    from tasks.detection.torchvision_weights import load_torchvision_ssdlite

    ours = ours_ssdlite_in_torchvision_config(score_thresh=DETECTION_SCORE_THRESH)
    load_torchvision_ssdlite(ours, model.state_dict(), "torchvision ssdlite320_mobilenet_v3_large")
    return ours


def ours_detection_thresholds() -> dict[str, float]:
    """Our DetectionModule's post-processing defaults, at `DETECTION_SCORE_THRESH` (torchvision's too)."""
    import inspect

    from tasks.detection.module import DetectionModule

    params = inspect.signature(DetectionModule.__init__).parameters
    names = ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_img")
    return {k: params[k].default for k in names} | {"score_thresh": DETECTION_SCORE_THRESH}


@dataclass
class Case:
    """One model of the table; `arch` pairs ours with torchvision's at equal architecture."""

    name: str
    task: str
    arch: str
    build: Callable[[np.ndarray], nn.Module]
    size: int

    @property
    def ours(self) -> bool:
        """Ours (a task module, exported by `export_module`) or torchvision's (a `DeployableModel`)."""
        return self.name.startswith("ours")


_TORCHVISION_SSDLITE: list[nn.Module] = []


def shared_torchvision_ssdlite(images: np.ndarray) -> nn.Module:
    """One recalibrated torchvision SSDLite per run: its graph and ours (same weights) are built from it."""
    if not _TORCHVISION_SSDLITE:
        _TORCHVISION_SSDLITE.append(torchvision_ssdlite_network(images))
    return _TORCHVISION_SSDLITE[0]


def recalibrated(model: nn.Module, images: np.ndarray) -> nn.Module:
    """`model` (a task module or a `DeployableModel`) with its batch norms recalibrated on `images`."""
    network = model.deployable() if hasattr(model, "deployable") else model.network
    recalibrate_batch_norm(network, images)
    return model.eval()


def cases(weights: str | bool, sizes: dict[str, int]) -> list[Case]:
    """The table's models. `build` takes the case's calibration images (uint8, N x 3 x H x W).

    MobileNetV2 defaults keep their ImageNet weights (and statistics); the random-init MobileNetV3 models get
    batch-norm statistics from those images (`recalibrate_batch_norm`), and our SSDLite MobileNetV3-L holds
    torchvision's weights, so both detection graphs score, rank and suppress the same candidates.
    """
    seg, det, dep = sizes["segmentation"], sizes["detection"], sizes["depth"]
    mnv3 = "mobilenet_v3_large"
    return [
        Case("ours depth default (mobilenet_v2 + nnconv5)", "depth", "", lambda im: build_ours_depth(weights), dep),
        Case(
            "ours segmentation default (mobilenet_v2 + deeplabv3_mobile)",
            "segmentation", "", lambda im: build_ours_segmentation(weights), seg,
        ),
        Case(
            "ours detection default (SSDLite mobilenet_v2)",
            "detection", "", lambda im: build_ours_detection(weights), det,
        ),
        Case(
            "ours LR-ASPP mobilenet_v3_large", "segmentation", "lraspp",
            lambda im: recalibrated(build_ours_segmentation(False, mnv3, head="lraspp"), im), seg,
        ),
        Case(
            "torchvision LR-ASPP MobileNetV3-L", "segmentation", "lraspp",
            lambda im: recalibrated(build_torchvision_lraspp(seg), im), seg,
        ),
        Case(
            "ours DeepLabv3 mobilenet_v3_large", "segmentation", "deeplabv3",
            lambda im: recalibrated(
                build_ours_segmentation(False, mnv3, head="deeplabv3", head_kwargs=TORCHVISION_DEEPLAB_HEAD), im
            ),
            seg,
        ),
        Case(
            "torchvision DeepLabv3 MobileNetV3-L", "segmentation", "deeplabv3",
            lambda im: recalibrated(build_torchvision_deeplabv3(seg), im), seg,
        ),
        Case(
            "ours SSDLite mobilenet_v3_large", "detection", "ssdlite",
            lambda im: build_ours_ssdlite_like_torchvision(shared_torchvision_ssdlite(im)), det,
        ),
        Case(
            "torchvision SSDLite320 MobileNetV3-L", "detection", "ssdlite",
            lambda im: build_torchvision_ssdlite(shared_torchvision_ssdlite(im), det), det,
        ),
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


def load_images(paths: list[Path], size: int, count: int, seed: int) -> np.ndarray:
    """(count, 3, size, size) uint8 RGB: `count` images resized to size x size (random pixels if no data)."""
    from PIL import Image

    if not paths:
        print(f"  (no sample images found: {count} random inputs instead; see --data)")
        return np.random.default_rng(seed).integers(0, 256, (count, 3, size, size), dtype=np.uint8)
    out = []
    for i in range(count):
        image = Image.open(paths[i % len(paths)]).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return np.stack(out)


# ---- export, sessions, agreement -----------------------------------------------------------------------------


def export_case(case: Case, tmp: Path, index: int, calibration: list[np.ndarray]) -> tuple[nn.Module, Path, Path]:
    """The case's deployable graph (for eager), its fp32 and int8 files.

    Ours: `export_module`, what `python -m tasks.<task> export [--int8]` runs (it verifies fp32 against
    PyTorch at two batch sizes). torchvision's: the same export, verification and quantization functions.
    """
    from tasks.common.deploy.onnx_export import (
        deployable_model,
        export_module,
        export_onnx,
        postprocessing_nodes,
        verify_export,
    )
    from tasks.common.deploy.quantize import quantize_int8

    fp32_path, int8_path = tmp / f"{index}.onnx", tmp / f"{index}_int8.onnx"
    size = (case.size, case.size)
    built = case.build(np.concatenate(calibration)).eval()
    if case.ours:
        # What the export reads from a data module: the image size (per task) and the class names.
        data = SimpleNamespace(
            image_size=case.size, hparams=SimpleNamespace(image_size=size, crop_size=size), class_names=None
        )
        export_module(built, data, fp32_path)
        export_module(built, data, int8_path, int8=True, calibration=calibration)
        return deployable_model(built, size), fp32_path, int8_path
    dynamic = case.task != "detection"
    export_onnx(built, fp32_path, size, dynamic_size=dynamic)
    verify_export(built, fp32_path, size, dynamic_size=dynamic)
    excluded = postprocessing_nodes(onnx.load(str(fp32_path)))
    quantize_int8(fp32_path, int8_path, iter(calibration), nodes_to_exclude=excluded)
    return built, fp32_path, int8_path


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
    """int8 vs fp32 on the same held-out images (outputs in the graph's order)."""
    if task == "segmentation":
        return f"classes {100 * np.mean(fp32[1] == int8[1]):.1f}%"
    if task == "depth":
        return f"rel err {100 * np.mean(np.abs(int8[0] - fp32[0]) / np.maximum(np.abs(fp32[0]), 1e-6)):.2f}%"
    top = 10  # detection: scores (N, K) by decreasing score
    return f"top-{top} score diff {np.mean(np.abs(fp32[1][:, :top] - int8[1][:, :top])):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=None, help="input side for every model (default per task)")
    parser.add_argument("--calibration", type=int, default=8, help="calibration images per model")
    parser.add_argument("--only", default="", help="substring filter on model names")
    parser.add_argument(
        "--back-to-back", type=int, default=1, help="consecutive runs per timed call (1: each run after the others')"
    )
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LITEDENSE_TEST_DATA", ROOT.parent / "shared/data"))
    )
    weights_dir = Path(os.environ.get("LITEDENSE_TEST_WEIGHTS", ROOT.parent / "shared/weights"))
    parser.add_argument("--weights", type=Path, default=weights_dir / "mobilenet_v2-b0353104.pth")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sizes = {"segmentation": 512, "detection": 320, "depth": 224}
    if args.size:
        sizes = dict.fromkeys(sizes, args.size)
    weights = str(args.weights) if args.weights.is_file() else False
    selected = [c for c in cases(weights, sizes) if args.only in c.name]
    print(
        f"threads={args.threads} repeats={args.repeats} mobilenet_v2 weights={weights or 'random'} "
        f"load average at start {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)"
    )

    runners: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="litedense_deploy_") as tmp:
        for case in selected:
            print(f"- {case.name}: export, calibrate on {args.calibration} images, quantize", flush=True)
            calib = load_images(image_paths(args.data, case.task, "train"), case.size, args.calibration, 1)
            model, fp32_path, int8_path = export_case(case, Path(tmp), len(runners), [im[None] for im in calib])
            sessions = {"fp32": session(fp32_path, args.threads), "int8": session(int8_path, args.threads)}
            held_out = load_images(image_paths(args.data, case.task, "val"), case.size, max(args.batch), 2)
            outs = {k: s.run(None, {"image": held_out[:4]}) for k, s in sessions.items()}
            runners[case.name] = {
                "case": case, "model": model, "sessions": sessions, "images": held_out,
                "agree": agreement(case.task, outs["fp32"], outs["int8"]),
            }  # fmt: skip

        times: dict[tuple[str, str, int], list[float]] = {}
        calls: dict[tuple[str, str, int], Callable[[], object]] = {}
        for batch in args.batch:
            for name, r in runners.items():
                x = np.ascontiguousarray(r["images"][:batch])
                xt = torch.from_numpy(x)

                def eager(m=r["model"], xt=xt):
                    with torch.inference_mode():
                        return m(xt)

                calls[(name, "eager", batch)] = eager
                for kind, s in r["sessions"].items():
                    calls[(name, kind, batch)] = lambda s=s, x=x: s.run(None, {"image": x})
        times = {k: [] for k in calls}
        for fn in calls.values():
            fn()  # warm-up
        loads = []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for key, fn in calls.items():
                start = time.perf_counter()
                for _ in range(args.back_to_back):
                    fn()
                times[key].append((time.perf_counter() - start) / args.back_to_back)
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}

    def ratio(a: tuple, b: tuple) -> float:
        # Median of the per-round ratios: the two calls of a round run seconds apart, so a
        # load change between rounds moves both; the ratio of the two medians would mix different rounds.
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    rows = []
    for batch in args.batch:
        for name, r in runners.items():
            arch = r["case"].arch
            pair = next((n for n, o in runners.items() if arch and o["case"].arch == arch and n != name), None)
            eager, fp32, int8 = keys = [(name, k, batch) for k in ("eager", "fp32", "int8")]
            eager_ms, fp32_ms, int8_ms = (med[k] for k in keys)
            vs = ""
            if pair and r["case"].ours:
                vs = f"**{ratio(fp32, (pair, 'fp32', batch)):.2f}x** / {ratio(int8, (pair, 'int8', batch)):.2f}x"
            int8_vs = f"**{ratio(int8, fp32):.2f}x**" if r["case"].ours else f"{ratio(int8, fp32):.2f}x"
            rows.append(
                f"| {name} | {r['case'].size} | {batch} | {eager_ms:.1f} | {fp32_ms:.1f} | {int8_ms:.1f} | "
                f"{ratio(fp32, eager):.2f}x | {int8_vs} | {vs} | {r['agree']} |"
            )
    print(
        f"\nload average (1 min) during timing: {min(loads):.1f} .. {max(loads):.1f}; "
        f"{args.back_to_back} run(s) per timed call"
    )
    print(
        "\n| model (uint8 in, task outputs out) | size | batch | eager (ms) | ort fp32 (ms) | ort int8 (ms) | "
        "fp32 / eager | int8 / fp32 | ours / torchvision (fp32 / int8) | int8 vs fp32 (held-out) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
