"""Every speed figure of litedense in one command: ours against torchvision / smp, and the plot.

Sections (all by default; `--only NAME ...` for some):
- `segmentation`: eval forward, 512x512, batch 1 and 8: ours plain and in its inference form
  (`backbones.fuse_for_inference(..., channels_last=True)`) against torchvision's DeepLabv3 / LR-ASPP
  MobileNetV3-Large (and the same inference form applied to torchvision's, for reference) and smp.
- `detection`: eval forward + post-processing, 320x320, batch 1 and 8, SSDLite MobileNetV3-Large with
  torchvision's weights in both.
- `training`: one training step (forward, loss, backward, optimizer step) of each task's model against
  torchvision's model of the same architecture where there is one (depth has none).
- `compile`: `torch.compile` (`--model.compile true`) against eager, eval and training.
- `coco`: COCO evaluation, the default backend (faster-coco-eval) against pycocotools, same input.
- `loaders`: each task's training loader on its real-data recipe (configs/*/…_finetune.yaml, needs
  LITEDENSE_TEST_DATA) with the default workers and augmentations, images/s, against the same
  model's training step, images/s.
- `plot`: eval latency vs parameters of every registered backbone with each head (PNG).

Models are timed round-robin (one call of each per round, so load from other processes hits all alike)
and the tables give medians. The default run takes a few minutes on 2 threads; `--full` runs more
rounds, the training step at batch 8 and 512x512, and every head in the plot.

    python benchmarks/speed.py [--threads 2] [--full] [--only segmentation detection ...] [--plot PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from _torchvision_pairs import (
    TorchvisionSegmentationNetwork,
    TorchvisionSSDNetwork,
    ours_ssdlite_in_torchvision_config,
    recalibrate_batch_norm,
)
from torch import Tensor, nn

from backbones import create_backbone, fuse_for_inference, list_backbones
from backbones.complexity import count_params

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("segmentation", "detection", "training", "compile", "coco", "loaders", "plot")


def round_robin(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, `rounds` samples each, interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table(title: str, rows: list[tuple], header: tuple[str, ...]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def with_batch_norm_statistics(network: nn.Module, size: int = 512, count: int = 8) -> nn.Module:
    """A random-init network with batch-norm statistics measured on smooth random images, in eval mode.

    With its init statistics (mean 0, variance 1) torchvision's MobileNetV3 activations shrink block after
    block to ~1e-14 and below (docs/deploy.md), values no trained network computes (and on the way to float32
    denormals, which x86 handles slowly); `recalibrate_batch_norm` gives every model of a table
    the activation ranges a trained one has. Weights are unchanged.
    """
    from tasks.common.deploy.onnx_export import random_images

    recalibrate_batch_norm(network, random_images(count, (size, size)).numpy())
    return network.eval()


# --- segmentation and detection eval ----------------------------------------------------------------
def segmentation_models(num_classes: int = 21) -> dict[str, tuple[str, nn.Module]]:
    """name -> (architecture, eval model): ours plain / inference form, torchvision plain / inference, smp."""
    import segmentation_models_pytorch as smp
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    from tasks.segmentation.module import SegmentationModule

    torch.manual_seed(0)
    tv_head = {"rates": [12, 24, 36], "dropout": 0.5, "extra_conv": True}  # torchvision's DeepLabHead
    ours_dl, ours_lr = (
        SegmentationModule(num_classes=num_classes, backbone="mobilenet_v3_large", head=head, head_kwargs=kwargs)
        for head, kwargs in (("deeplabv3", tv_head), ("lraspp", None))
    )
    for module in (ours_dl, ours_lr):
        module.configure_model()  # the form validate / test run: channels-last for MobileNetV3
    ours_dl, ours_lr = (with_batch_norm_statistics(module.deployable()) for module in (ours_dl, ours_lr))
    tv_dl = with_batch_norm_statistics(TorchvisionSegmentationNetwork(
        deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    ))  # fmt: skip
    tv_lr = with_batch_norm_statistics(
        TorchvisionSegmentationNetwork(
            lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        )
    )
    smp_dl = with_batch_norm_statistics(
        smp.DeepLabV3("tu-mobilenetv3_large_100", encoder_weights=None, encoder_output_stride=16, classes=num_classes)
    )
    models = {
        "ours deeplabv3, inference form": ("deeplabv3", fuse_for_inference(ours_dl.eval(), channels_last=True)),
        "ours deeplabv3": ("deeplabv3", ours_dl),
        "torchvision deeplabv3": ("deeplabv3", tv_dl),
        "torchvision deeplabv3, same inference form": ("deeplabv3", fuse_for_inference(tv_dl, channels_last=True)),
        "smp DeepLabV3": ("deeplabv3", smp_dl),
        "ours lraspp, inference form": ("lraspp", fuse_for_inference(ours_lr.eval(), channels_last=True)),
        "ours lraspp": ("lraspp", ours_lr),
        "torchvision lraspp": ("lraspp", tv_lr),
        "torchvision lraspp, same inference form": ("lraspp", fuse_for_inference(tv_lr, channels_last=True)),
    }
    return {name: (arch, model.eval()) for name, (arch, model) in models.items()}


def bench_segmentation(args) -> None:
    built = segmentation_models()
    for batch in (1, 8):
        x = torch.randn(batch, 3, 512, 512)
        with torch.inference_mode():
            medians = round_robin({n: (lambda m=m, x=x: m(x)) for n, (_, m) in built.items()}, args.rounds)
        rows = []
        for name, (arch, model) in built.items():
            ratio = medians[name] / medians[f"torchvision {arch}"]
            rows.append((name, f"{count_params(model) / 1e6:.2f}", f"{1000 * medians[name]:.1f}", f"{ratio:.2f}x"))
        table(f"segmentation eval, 512x512, batch {batch}", rows, ("model", "params (M)", "median ms", "/ torchvision"))


def detection_models():
    """Ours (torchvision's SSDLite configuration and weights) and torchvision's ssdlite320_mobilenet_v3_large."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from tasks.detection.torchvision_weights import load_torchvision_ssdlite

    torch.manual_seed(0)
    ours = ours_ssdlite_in_torchvision_config(
        score_thresh=0.001, nms_thresh=0.55, topk_candidates=300, detections_per_img=300
    )
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    with_batch_norm_statistics(TorchvisionSSDNetwork(theirs), size=320)
    load_torchvision_ssdlite(ours, theirs.state_dict())  # same weights: NMS does the same work in both
    ours.configure_model()  # the form validate / test run: channels-last for MobileNetV3
    return ours.eval(), theirs.eval()


def bench_detection(args) -> None:
    from heads.ssdlite import postprocess

    ours, theirs = detection_models()
    size = 320
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    boxes = ours.head.default_boxes((size, size))
    networks = {"ours": ours.deployable().eval(), "ours, inference form": ours.inference_network(channels_last=True)}

    def ours_eval(network: nn.Module, x: Tensor):
        reg, logits = network((x - mean) / std)  # our pipeline normalises; timed for fairness
        return postprocess(
            reg, logits, boxes, (size, size), score_thresh=0.001, nms_thresh=0.55, topk_candidates=300,
            detections_per_img=300,
        )  # fmt: skip

    for batch in (1, 8):
        x = torch.rand(batch, 3, size, size)
        fns = {name: (lambda n=n, x=x: ours_eval(n, x)) for name, n in networks.items()}
        fns["torchvision"] = lambda x=x: theirs(list(x))
        with torch.inference_mode():
            medians = round_robin(fns, args.rounds)
        rows = [(n, f"{1000 * t:.1f}", f"{t / medians['torchvision']:.2f}x") for n, t in medians.items()]
        table(
            f"detection eval + post-processing, SSDLite320 MobileNetV3-L, batch {batch}",
            rows,
            ("model", "median ms", "/ torchvision"),
        )


# --- training step ---------------------------------------------------------------------------------
def _seg_step(model: nn.Module, x: Tensor, y: Tensor, opt, torchvision: bool) -> None:
    out = model(x)["out"] if torchvision else model(x)
    loss = nn.functional.cross_entropy(out, y, ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()


def bench_training(args) -> None:
    """Ours in the task's training form (channels-last for MobileNetV3, `TaskModule.channels_last`) and in
    NCHW, against torchvision's model of the same architecture, same input, loss and optimizer."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    from tasks.detection.losses import ssd_loss
    from tasks.segmentation.module import SegmentationModule

    batch, size = (8, 512) if args.full else (4, 384)
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 21, (batch, size, size))
    tv_head = {"rates": [12, 24, 36], "dropout": 0.5, "extra_conv": True}
    pairs = {
        "deeplabv3": (
            SegmentationModule(num_classes=21, backbone="mobilenet_v3_large", head="deeplabv3", head_kwargs=tv_head),
            deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=False),
        ),
        "lraspp": (
            SegmentationModule(num_classes=21, backbone="mobilenet_v3_large", head="lraspp"),
            lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21),
        ),
    }
    fns, arch_of = {}, {}

    def sgd(model: nn.Module):
        return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    for arch, (ours, theirs) in pairs.items():
        nchw = copy.deepcopy(ours).deployable().train()
        ours.configure_model()  # the memory format the Trainer would set up
        for name, net in ((f"ours {arch}", ours.deployable().train()), (f"ours {arch}, NCHW", nchw)):
            fns[name], arch_of[name] = partial(_seg_step, net, x, y, sgd(net), False), arch
        theirs.train()
        name = f"torchvision {arch}"
        fns[name], arch_of[name] = partial(_seg_step, theirs, x, y, sgd(theirs), True), arch
    ours_det, theirs_det = detection_models()  # ours in its training form (channels-last)
    ours_det_nchw = copy.deepcopy(ours_det).to(memory_format=torch.contiguous_format)
    xd = torch.rand(8, 3, 320, 320)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(8):
        xy = torch.rand(3, 2, generator=g) * 200
        targets.append({"boxes": torch.cat([xy, xy + 40 + torch.rand(3, 2, generator=g) * 60], 1),
                        "labels": torch.randint(1, 91, (3,), generator=g)})  # fmt: skip
    boxes = ours_det.head.default_boxes((320, 320))

    def ours_det_step(model, opt):
        reg, logits = model(xd)
        loss = ssd_loss(reg, logits, targets, boxes)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def theirs_det_step(opt):
        loss = sum(theirs_det(list(xd), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    for name, model in (("ours ssdlite", ours_det), ("ours ssdlite, NCHW", ours_det_nchw)):
        model.train()
        fns[name], arch_of[name] = partial(ours_det_step, model, sgd(model)), "ssdlite"
    theirs_det.train()
    fns["torchvision ssdlite"], arch_of["torchvision ssdlite"] = partial(theirs_det_step, sgd(theirs_det)), "ssdlite"
    # Round-robin within each architecture. Interleaving all nine steps overflows oneDNN's primitive cache
    # (ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1024 compiled kernels by default, about three of these models' forward
    # and backward convolutions), so every step recompiles its kernels, and most of all the channels-last
    # ones, which share no shapes with the NCHW models (measured: ours ssdlite 1.0x torchvision's in a
    # nine-model round-robin, 0.74x with the capacity raised to 16384, 0.70x grouped). A training run repeats
    # one model's step; within one architecture the load from other processes still hits all alike.
    medians = {}
    for arch in dict.fromkeys(arch_of.values()):
        medians.update(round_robin({n: f for n, f in fns.items() if arch_of[n] == arch}, args.rounds))
    rows = []
    for name, t in medians.items():
        arch = arch_of[name]
        ratio = t / medians[f"torchvision {arch}"]
        shape = "8x320x320" if arch == "ssdlite" else f"{batch}x{size}x{size}"
        rows.append((name, shape, f"{1000 * t:.0f}", f"{ratio:.2f}x"))
    table("training step (forward, loss, backward, SGD)", rows, ("model", "input", "median ms", "/ torchvision"))


# --- torch.compile ---------------------------------------------------------------------------------
def bench_compile(args) -> None:
    from tasks.segmentation.module import SegmentationModule

    torch.manual_seed(0)
    eager = SegmentationModule(num_classes=21, backbone="mobilenet_v3_large", head="lraspp").deployable().eval()
    compiled = copy.deepcopy(eager)
    start = time.perf_counter()
    compiled.compile()
    x = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        compiled(x)
    first = time.perf_counter() - start
    fused = fuse_for_inference(eager, channels_last=True)
    with torch.inference_mode():
        medians = round_robin({"eager": lambda: eager(x), "compiled": lambda: compiled(x), "inference form":
                               lambda: fused(x)}, args.rounds)  # fmt: skip
    rows = [(n, f"{1000 * t:.1f}", f"{t / medians['eager']:.2f}x") for n, t in medians.items()]
    table(f"torch.compile, lraspp MobileNetV3-L eval 512x512 batch 1 (first call {first:.0f} s)", rows,
          ("mode", "median ms", "/ eager"))  # fmt: skip

    batch, size = 4, 256
    xt, yt = torch.randn(batch, 3, size, size), torch.randint(0, 21, (batch, size, size))
    # Both in the task's training form, as `fit` sets them up (`configure_model`: channels-last, then with
    # `--model.compile true` the backbone and head compiled).
    modules = [SegmentationModule(num_classes=21, backbone="mobilenet_v3_large", head="lraspp", compile=c) for c in
               (False, True)]  # fmt: skip
    modules[1].load_state_dict(modules[0].state_dict())
    for module in modules:
        module.configure_model()
    train_eager, train_compiled = (module.deployable() for module in modules)
    o1, o2 = (torch.optim.SGD(m.parameters(), lr=1e-4) for m in (train_eager, train_compiled))
    start = time.perf_counter()
    _seg_step(train_compiled.train(), xt, yt, o2, False)
    first = time.perf_counter() - start
    medians = round_robin(
        {"eager": lambda: _seg_step(train_eager.train(), xt, yt, o1, False),
         "compiled": lambda: _seg_step(train_compiled, xt, yt, o2, False)}, max(3, args.rounds // 2),
    )  # fmt: skip
    rows = [(n, f"{1000 * t:.1f}", f"{t / medians['eager']:.2f}x") for n, t in medians.items()]
    table(f"torch.compile, lraspp training step {batch}x{size}x{size} (first call {first:.0f} s)", rows,
          ("mode", "median ms", "/ eager"))  # fmt: skip


# --- COCO evaluation -------------------------------------------------------------------------------
def bench_coco(args) -> None:
    from tasks.detection.coco_eval import coco_evaluate, default_backend

    data = os.environ.get("LITEDENSE_TEST_DATA")
    if not data:
        print("\ncoco: skipped (set LITEDENSE_TEST_DATA to the shared data folder for COCO-mini)")
        return
    gt_path = Path(data) / "detection" / "coco_mini" / "annotations" / "instances_val2017.json"
    import numpy as np

    gt = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    cats = [c["id"] for c in gt["categories"]]
    dets = []
    for ann in gt["annotations"]:  # 10 detections per object: perturbed boxes, some relabelled
        x, y, w, h = ann["bbox"]
        for _ in range(10):
            dets.append({"image_id": ann["image_id"], "score": float(rng.random()),
                         "category_id": ann["category_id"] if rng.random() > 0.2 else int(rng.choice(cats)),
                         "bbox": [x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h, w, h]})  # fmt: skip
    results = {}

    def run(backend):
        with contextlib.redirect_stdout(io.StringIO()):
            results[backend] = coco_evaluate(gt_path, dets, backend=backend, verbose=False)

    medians = round_robin({b: (lambda b=b: run(b)) for b in ("auto", "pycocotools")}, args.rounds)
    same = max(abs(results["auto"][k] - results["pycocotools"][k]) for k in results["auto"])
    fast, slow = medians["auto"], medians["pycocotools"]
    rows = [
        (f"default ({default_backend()})", f"{1000 * fast:.0f}", f"{fast / slow:.2f}x"),
        ("pycocotools", f"{1000 * slow:.0f}", "1.00x"),
    ]
    title = f"COCO bbox evaluation, COCO-mini val ({len(gt['images'])} images, {len(dets)} detections)"
    table(f"{title}; largest difference of the 12 numbers {same:.1e}", rows, ("backend", "median ms", "/ pycocotools"))


# --- data loaders ----------------------------------------------------------------------------------
RECIPES = {
    "depth": "configs/depth/sevenscenes_fastdepth_mobilenet_v2_finetune.yaml",
    "segmentation": "configs/segmentation/camvid_deeplabv3plus_mobilenet_v2_finetune.yaml",
    "detection": "configs/detection/voc_bccd_ssdlite_mobilenet_v2_finetune.yaml",
}


def task_from_recipe(task: str, overrides: dict | None = None):
    """(data module, task module) of a recipe, built from its `data:` and `model:` sections."""
    import importlib

    import yaml

    config = yaml.safe_load((ROOT / RECIPES[task]).read_text())
    data_cfg = {**config["data"], **(overrides or {})}
    if data_cfg.get("root"):
        data_cfg["root"] = str((ROOT / data_cfg["root"]).resolve())
    datamodule_cls = {"depth": "DepthDataModule", "segmentation": "SegmentationDataModule",
                      "detection": "DetectionDataModule"}[task]  # fmt: skip
    module_cls = {"depth": "DepthModule", "segmentation": "SegmentationModule", "detection": "DetectionModule"}[task]
    dm = getattr(importlib.import_module(f"tasks.{task}.datamodule"), datamodule_cls)(**data_cfg)
    model_cfg = {k: v for k, v in config.get("model", {}).items() if k not in ("weights", "backbone_weights")}
    model_cfg.pop("pretrained", None)
    model = getattr(importlib.import_module(f"tasks.{task}.module"), module_cls)(**model_cfg)
    return dm, model


def loader_throughput(dm, batches: int) -> tuple[float, int]:
    """Images per second of the training loader (first batch excluded: worker start-up)."""
    from tasks.common.data import make_loader

    dm.setup("fit")
    hp = dm.hparams
    loader = make_loader(dm.datasets["train"], hp.batch_size, train=True, num_workers=hp.num_workers,
                         collate_fn=type(dm).collate)  # fmt: skip
    it = iter(loader)
    next(it)
    start, images = time.perf_counter(), 0
    for _, batch in zip(range(batches), it):
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start), hp.num_workers


def step_throughput(dm, model, steps: int) -> float:
    """Images per second of the task's own training step (forward, loss, backward, optimizer step)."""
    from tasks.common.data import make_loader

    dm.setup("fit")
    if model.head is None:
        model.build_head(dm.num_classes)
    loader = make_loader(dm.datasets["train"], dm.hparams.batch_size, train=True, collate_fn=type(dm).collate)
    batch = next(iter(loader))
    model.configure_model()  # the task's training form (memory format), as the Trainer sets it up
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = model.training_step(batch, 0)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
    return steps * batch["image"].shape[0] / (time.perf_counter() - start)


def bench_loaders(args) -> None:
    if not os.environ.get("LITEDENSE_TEST_DATA"):
        print("\nloaders: skipped (the recipes read LITEDENSE_TEST_DATA's real datasets)")
        return
    rows = []
    for task in RECIPES:
        dm, model = task_from_recipe(task)
        loader, workers = loader_throughput(dm, 6 if not args.full else 20)
        step = step_throughput(dm, model, 3 if not args.full else 8)
        recipe = RECIPES[task].split("/")[-1]
        rows.append((task, recipe, workers, f"{loader:.1f}", f"{step:.1f}", f"{loader / step:.1f}x"))
    table("training loader vs training step (default workers and augmentations of each recipe)", rows,
          ("task", "recipe", "workers", "loader images/s", "step images/s", "loader / step"))  # fmt: skip


# --- the plot --------------------------------------------------------------------------------------
def bench_plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heads.deeplabv3 import SEGMENTATION_HEADS, create_segmentation_head
    from heads.depth import DEPTH_HEADS, create_depth_head
    from heads.ssdlite import create_detection_head

    heads: dict[str, Callable] = {
        "lraspp": lambda info: create_segmentation_head("lraspp", info, 21),
        "nnconv5": lambda info: create_depth_head("nnconv5", info),
        "ssdlite": None,
    }
    if args.full:
        heads = {h: (lambda info, h=h: create_segmentation_head(h, info, 21)) for h in SEGMENTATION_HEADS}
        heads.update({h: (lambda info, h=h: create_depth_head(h, info)) for h in DEPTH_HEADS})
        heads["ssdlite"] = None
    size = 512 if args.full else 256
    x = torch.randn(1, 3, size, size)

    class Net(nn.Module):
        def __init__(self, backbone, head, dense):
            super().__init__()
            self.backbone, self.head, self.dense = backbone, head, dense

        def forward(self, images):
            features = self.backbone(images)
            return self.head(features, output_size=images.shape[-2:]) if self.dense else self.head(features)

    points: dict[str, list[tuple[str, float, float]]] = {}
    for head_name, make in heads.items():
        for name in list_backbones():
            try:
                if make is None:
                    backbone = create_backbone(name, feature_location="expansion")
                    net = Net(backbone, create_detection_head("ssdlite", backbone.feature_info, 91), False)
                else:
                    backbone = create_backbone(name, output_stride=16 if head_name != "nnconv5" else 32)
                    net = Net(backbone, make(backbone.feature_info), True)
            except (ValueError, TypeError) as err:  # e.g. a net without expansion layers for SSDLite
                print(f"plot: {name} + {head_name} skipped ({err})")
                continue
            fused = fuse_for_inference(net.eval(), channels_last=True)
            with torch.inference_mode():
                t = round_robin({"plain": lambda n=net: n(x), "fused": lambda f=fused: f(x)}, args.plot_rounds)
            points.setdefault(f"ours {head_name}", []).append((name, count_params(net) / 1e6, 1000 * t["plain"]))
            points.setdefault(f"ours {head_name}, inference form", []).append(
                (name, count_params(net) / 1e6, 1000 * t["fused"])
            )
    references = segmentation_models()
    with torch.inference_mode():
        for name in ("torchvision lraspp", "torchvision deeplabv3", "smp DeepLabV3"):
            model = references[name][1]
            t = round_robin({"m": lambda m=model: m(x)}, args.plot_rounds)["m"]
            points.setdefault("torchvision / smp", []).append((name, count_params(model) / 1e6, 1000 * t))
        _, theirs = detection_models()
        theirs.eval()
        xd = torch.rand(1, 3, size, size)
        t = round_robin({"m": lambda: theirs(list(xd))}, args.plot_rounds)["m"]
        points["torchvision / smp"].append(("torchvision ssdlite320", count_params(theirs) / 1e6, 1000 * t))

    fig, ax = plt.subplots(figsize=(11, 7))
    for label, pts in points.items():
        marker = "*" if label.startswith("torchvision") else ("o" if "inference" in label else "x")
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], label=label, marker=marker, s=60 if marker == "*" else 25)
        if label.startswith("torchvision"):
            for name, params, ms in pts:
                ax.annotate(name, (params, ms), fontsize=7)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("parameters (M)"), ax.set_ylabel(f"eval latency, batch 1, {size}x{size} (ms, {args.threads} threads)")
    ax.set_title("litedense: every registered backbone with each head (x plain, o inference form)")
    ax.legend(fontsize=7)
    out = Path(args.plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out)  # never a half-written figure
    print(f"\nplot: {out} ({sum(len(p) for p in points.values())} points)")
    rows = [(label, name, f"{params:.2f}", f"{ms:.1f}") for label, pts in points.items() for name, params, ms in pts]
    table(f"plot data (batch 1, {size}x{size})", rows, ("series", "model", "params (M)", "median ms"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per table (default 5, --full 15)")
    parser.add_argument("--plot-rounds", type=int, default=None, help="rounds per plot point (default 2, --full 5)")
    parser.add_argument("--full", action="store_true", help="more rounds, bigger training step, every head")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "latency_vs_params.png"))
    args = parser.parse_args()
    args.rounds = args.rounds or (15 if args.full else 5)
    args.plot_rounds = args.plot_rounds or (5 if args.full else 2)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min)")
    for section in args.only:
        start = time.perf_counter()
        globals()[f"bench_{section}"](args)
        print(f"({section}: {time.perf_counter() - start:.0f} s)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
