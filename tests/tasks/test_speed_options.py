"""Speed options of the tasks: `--model.compile`, the inference form, COCO evaluation's default backend.

The COCO parity tests run on the real COCO-mini annotations (LITEDENSE_TEST_DATA) with several result
sets, bbox and segm: faster-coco-eval (the default backend) must give pycocotools' 12 numbers to 1e-9.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from tasks.depth.module import DepthModule
from tasks.detection.coco_eval import METRIC_NAMES, coco_evaluate, default_backend
from tasks.detection.module import DetectionModule
from tasks.segmentation.module import SegmentationModule

# --- torch.compile ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DepthModule(backbone="mobilenet_v3_small", **kw),
        lambda **kw: SegmentationModule(num_classes=3, backbone="mobilenet_v3_small", head="lraspp", **kw),
        lambda **kw: DetectionModule(num_classes=3, backbone="mobilenet_v3_small", **kw),
    ],
    ids=["depth", "segmentation", "detection"],
)
def test_compile_option_compiles_backbone_and_head_keeping_the_state_dict(make):
    plain, compiled = make(), make(compile=True)
    assert compiled.hparams.compile is True and plain.hparams.compile is False
    keys = list(compiled.state_dict())
    plain.configure_model()
    compiled.configure_model()
    compiled.configure_model()  # a second fit / test in the same process must not compile twice
    assert plain.backbone._compiled_call_impl is None
    assert compiled.backbone._compiled_call_impl is not None and compiled.head._compiled_call_impl is not None
    # Checkpoints written with and without compile load into each other.
    assert list(compiled.state_dict()) == keys == list(plain.state_dict())


@pytest.mark.slow
def test_compiled_segmentation_forward_equals_eager():
    torch.manual_seed(0)
    model = SegmentationModule(num_classes=3, backbone="mobilenet_v3_small", head="lraspp", compile=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        eager = model(x)
        model.configure_model()
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_inference_network_equals_deployable():
    torch.manual_seed(0)
    model = SegmentationModule(num_classes=3, backbone="mobilenet_v3_small", head="lraspp").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model.deployable()(x)
        for channels_last in (False, True):
            torch.testing.assert_close(
                model.inference_network(channels_last=channels_last)(x), expected, rtol=1e-4, atol=1e-5
            )
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the module keeps its batch norms"


# --- memory format --------------------------------------------------------------------------------
MAKERS = {
    "depth": lambda **kw: DepthModule(**kw),
    "segmentation": lambda **kw: SegmentationModule(num_classes=3, head="lraspp", **kw),
    "detection": lambda **kw: DetectionModule(num_classes=3, **kw),
}


def _is_channels_last(module: torch.nn.Module) -> bool:
    # Only weights whose two layouts differ: a depthwise (C, 1, k, k) or a 1x1 weight is both at once.
    weights = [
        m.weight
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and m.weight.shape[1] > 1
    ]
    formats = {w.is_contiguous(memory_format=torch.channels_last) for w in weights}
    assert len(formats) == 1, "some convolution weights are channels-last and some are not"
    return formats.pop()


@pytest.mark.parametrize("task", list(MAKERS))
@pytest.mark.parametrize(
    ("backbone", "option", "expected"),
    [
        ("mobilenet_v3_small", None, True),  # measured faster in NHWC: the registry's default
        ("mobilenet_v1", None, False),  # measured slower in NHWC (benchmarks/memory_format.py)
        ("mobilenet_v3_small", False, False),
        ("mobilenet_v1", True, True),
    ],
)
def test_configure_model_sets_the_memory_format_from_the_option_or_the_backbone(task, backbone, option, expected):
    from backbones import get_backbone_entry

    assert get_backbone_entry("mobilenet_v1").channels_last is False
    model = MAKERS[task](backbone=backbone, channels_last=option)
    assert not _is_channels_last(model), "the format is set by configure_model, not at construction"
    model.configure_model()
    assert model.uses_channels_last is expected
    assert _is_channels_last(model) is expected


def _one_step(model, batch: dict, channels_last: bool, dtype: torch.dtype) -> tuple[Tensor, dict, dict]:
    """Loss, gradients and weights after one SGD step of `model` in the given format and precision."""
    model.hparams.channels_last = channels_last
    model.configure_model()
    model.to(dtype).train()
    cast = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = model.training_step(cast, 0)
    loss.backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    weights = {k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()}
    return loss.detach().double(), grads, weights


@pytest.mark.parametrize("task", list(MAKERS))
def test_channels_last_training_step_equals_nchw(task, tiny_batches):
    """Same loss, gradients and updated weights in both formats.

    In float64 the two formats agree to 1e-9 (the same computation). In float32 both are rounded versions of
    that result: oneDNN's channels-last kernels sum the weight gradients in another order, measured 2-5x the
    NCHW step's own float32 error on this tiny random-init batch (largest on the stem's weight gradient,
    a sum over every pixel), so the bound is 10x that error and 5e-3 of the largest gradient.
    """
    torch.manual_seed(0)
    state = MAKERS[task](backbone="mobilenet_v3_small").state_dict()
    runs = {}
    for name, channels_last, dtype in [("exact", False, torch.float64), ("exact_cl", True, torch.float64),
                                       ("nchw", False, torch.float32), ("nhwc", True, torch.float32)]:  # fmt: skip
        model = MAKERS[task](backbone="mobilenet_v3_small")
        model.load_state_dict(state)
        runs[name] = _one_step(model, tiny_batches[task], channels_last, dtype)

    def distance(a: str, b: str) -> float:
        (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) = runs[a], runs[b]
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50 and state_a.keys() == state_b.keys()
        scale = max(g.abs().max().item() for g in grads_a.values())  # some gradients are 0 in exact arithmetic
        return max(
            abs(loss_a - loss_b).item() / abs(loss_a).item(),
            max((grads_b[n] - g).abs().max().item() for n, g in grads_a.items()) / scale,
            max((state_b[k] - v).abs().max().item() / v.abs().max().clamp_min(1).item() for k, v in state_a.items()),
        )

    assert distance("exact", "exact_cl") < 1e-9
    nchw_error, nhwc_error = distance("exact", "nchw"), distance("exact", "nhwc")
    assert nhwc_error < 5e-3 and nhwc_error <= 10 * nchw_error + 1e-6, (nhwc_error, nchw_error)


@pytest.fixture
def tiny_batches() -> dict[str, dict]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 96, 96, generator=g)
    depth = torch.rand(2, 1, 96, 96, generator=g) * 8 + 0.5
    mask = torch.randint(0, 3, (2, 96, 96), generator=g)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 5.0, 90.0, 50.0], [0.0, 40.0, 40.0, 95.0]]), "labels": torch.tensor([2, 1])},
    ]
    return {
        "depth": {"image": images, "depth": depth},
        "segmentation": {"image": images, "mask": mask},
        "detection": {"image": images, "targets": targets},
    }


# --- COCO evaluation backend -----------------------------------------------------------------------


def test_default_backend_is_faster_coco_eval_when_installed_else_pycocotools(monkeypatch):
    pytest.importorskip("faster_coco_eval")
    assert default_backend() == "faster_coco_eval"
    assert DetectionModule(num_classes=3, backbone="mobilenet_v3_small").hparams.eval_backend == "auto"
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now fails: the fallback
    assert default_backend() == "pycocotools"


def _result_sets(gt: dict, iou_type: str) -> list[list[dict]]:
    """Three result sets of different quality from the ground truth: perturbed, relabelled, dropped, extras."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    sets = []
    for seed, noise, drop in ((0, 0.05, 0.1), (1, 0.15, 0.3), (2, 0.3, 0.5)):
        rng = np.random.default_rng(seed)
        dets = []
        for ann in gt["annotations"]:
            if rng.random() < drop:
                continue
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
            det = {"image_id": ann["image_id"], "category_id": cat, "score": float(rng.random())}
            x, y, w, h = ann["bbox"]
            dx, dy, s = rng.normal(0, noise) * w, rng.normal(0, noise) * h, rng.uniform(1 - noise, 1 + noise)
            if iou_type == "bbox":
                det["bbox"] = [x + dx, y + dy, w * s, h * s]
            else:
                height, width = sizes[ann["image_id"]]
                rle = ann["segmentation"]
                if isinstance(rle, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(rle, height, width))
                elif isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, height, width)
                mask = mask_utils.decode(rle)
                mask = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))  # shifted: a lower, non-trivial IoU
                encoded = mask_utils.encode(np.asfortranarray(mask))
                encoded["counts"] = encoded["counts"].decode("ascii")
                det["segmentation"] = encoded
            dets.append(det)
        for image_id, (height, width) in sizes.items():  # false positives
            w, h = rng.uniform(5, width / 2), rng.uniform(5, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            det = {"image_id": image_id, "category_id": int(rng.choice(cat_ids)), "score": float(rng.random() * 0.5)}
            if iou_type == "bbox":
                det["bbox"] = [x, y, w, h]
            else:
                mask = np.zeros((height, width), np.uint8, order="F")
                mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
                encoded = mask_utils.encode(mask)
                encoded["counts"] = encoded["counts"].decode("ascii")
                det["segmentation"] = encoded
            dets.append(det)
        sets.append(dets)
    return sets


def _pycocotools(gt_path, dets: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_default_backend_gives_pycocotools_numbers_on_coco_mini(shared_data, iou_type):
    pytest.importorskip("faster_coco_eval")
    gt_path = shared_data / "detection" / "coco_mini" / "annotations" / "instances_val2017.json"
    gt = json.loads(gt_path.read_text())
    aps = []
    for dets in _result_sets(gt, iou_type):
        reference = _pycocotools(gt_path, dets, iou_type)
        for backend in ("auto", "pycocotools"):
            got = coco_evaluate(gt_path, dets, iou_type=iou_type, backend=backend, verbose=False)
            for name, ref in zip(METRIC_NAMES, reference, strict=True):
                assert abs(got[name] - ref) <= 1e-9, (iou_type, backend, name, got[name], ref)
        aps.append(reference[0])
    # Three different, non-trivial result sets: the comparison means something.
    assert all(0.02 < ap < 0.95 for ap in aps) and len({round(ap, 3) for ap in aps}) == 3, aps


# --- the loader-bottleneck hint --------------------------------------------------------------------


class _Trainer:
    train_dataloader = torch.utils.data.DataLoader([0], num_workers=0)


def _drive(hint, wait: float, step: float, batches: int) -> None:
    import time

    for i in range(batches):
        time.sleep(wait)
        hint.on_train_batch_start(_Trainer(), None, None, i)
        time.sleep(step)
        hint.on_train_batch_end(_Trainer(), None, None, None, i)


@pytest.mark.parametrize(("wait", "expect"), [(0.02, True), (0.0, False)])
def test_loader_hint_only_when_the_step_waits(wait, expect, monkeypatch):
    from tasks.common import data

    messages = []
    monkeypatch.setattr(data, "rank_zero_info", messages.append)
    hint = data.LoaderBottleneckHint(skip=1, window=4)
    _drive(hint, wait, 0.01, 8)
    assert bool(messages) == expect and len(messages) <= 1  # said once at most
    if expect:
        assert "--data.num_workers (now 0)" in messages[0]
    callbacks = DepthModule(backbone="mobilenet_v3_small").configure_callbacks()
    assert sum(isinstance(c, data.LoaderBottleneckHint) for c in callbacks) == 1  # every task gets it
