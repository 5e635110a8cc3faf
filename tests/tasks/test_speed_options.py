"""Speed options of the tasks: `--model.compile`, the inference form, COCO evaluation's default backend.

The COCO parity tests run on the real COCO-mini annotations (LITEDENSE_TEST_DATA) with several result
sets, bbox and segm: faster-coco-eval (the default backend) must give pycocotools' 12 numbers to 1e-9.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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
