"""COCO evaluation by pycocotools itself (or faster-coco-eval, which gives the same numbers).

The 12 numbers are those of `COCOeval.summarize()` (Lin et al., "Microsoft COCO", ECCV 2014;
https://cocodataset.org/#detection-eval). We only check the inputs so that a wrong file fails with
a message instead of an assertion deep inside pycocotools.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.detection.datasets.coco import load_coco

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_SUMMARY_LINES = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)


def load_results(path: str | os.PathLike) -> list[dict]:
    """A COCO results file (a JSON list of detections), with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(results, list):
        raise ValueError(
            f"{path} must hold a JSON list of detections (COCO results format), got {type(results).__name__}"
        )
    return results


def check_results(gt: COCO, results: Sequence[dict], iou_type: str = "bbox", source: str = "results") -> None:
    """Fail clearly when results do not belong to the ground truth or lack the fields of `iou_type`.

    Raises:
        ValueError: Missing fields, or image / category ids absent from the ground truth (a results
            file for another annotation set).
    """
    needed = {"image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation"}
    for i, det in enumerate(results):
        missing = needed - set(det)
        if missing:
            raise ValueError(f"{source}: detection {i} lacks {sorted(missing)} (needed for iou_type '{iou_type}')")
    image_ids = {d["image_id"] for d in results} - set(gt.getImgIds())
    if image_ids:
        raise ValueError(
            f"{source} has detections for {len(image_ids)} image id(s) not in the ground truth (e.g. "
            f"{sorted(image_ids)[:5]}): it belongs to another annotation set"
        )
    category_ids = {d["category_id"] for d in results} - set(gt.getCatIds())
    if category_ids:
        raise ValueError(
            f"{source} uses category id(s) {sorted(category_ids)[:10]} that are not in the ground truth's "
            f"categories: it belongs to another annotation set or uses contiguous labels instead of category ids"
        )


def default_backend() -> str:
    """The backend "auto" picks: "faster_coco_eval" when it imports (a dependency), else "pycocotools"."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster_coco_eval"


def coco_evaluate(
    gt: COCO | str | os.PathLike,
    results: Sequence[dict] | str | os.PathLike,
    *,
    iou_type: str = "bbox",
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
    verbose: bool = True,
) -> dict[str, float]:
    """The 12 COCO numbers of detections against ground truth.

    Args:
        gt: Ground truth (COCO object or instances JSON).
        results: Detections (list of dicts or a results JSON file) with category ids of the ground truth.
        iou_type: "bbox" or "segm".
        image_ids: Evaluate on these images only (default: every ground-truth image).
        backend: "auto" (faster-coco-eval when installed, else pycocotools), "pycocotools" or
            "faster_coco_eval": the same numbers (tests, to 1e-9); faster-coco-eval is several times faster.
        verbose: Print the standard summary table.

    Returns:
        {"AP", "AP50", ..., "ARl"}: floats at full precision (-1 where undefined, as pycocotools).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    source = str(results) if isinstance(results, (str, os.PathLike)) else "results"
    gt = gt if isinstance(gt, COCO) else load_coco(gt)
    results = load_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    check_results(gt, results, iou_type, source)
    if not results:
        warnings.warn(f"{source} holds no detections: every AP and AR is 0", stacklevel=2)
        return dict.fromkeys(METRIC_NAMES, 0.0)
    if backend == "auto":
        backend = default_backend()
    if backend == "pycocotools":
        stats = _run(COCO, COCOeval, gt.dataset, results, iou_type, image_ids, verbose)
    elif backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as err:
            raise ImportError("backend 'faster_coco_eval' needs `pip install faster-coco-eval`") from err
        stats = _run(FastCOCO, COCOeval_faster, gt.dataset, results, iou_type, image_ids, verbose)
    else:
        raise ValueError(f"backend must be 'auto', 'pycocotools' or 'faster_coco_eval', got {backend!r}")
    return {name: float(v) for name, v in zip(METRIC_NAMES, stats)}


def _run(coco_cls, eval_cls, gt_dataset: dict, results: list, iou_type: str, image_ids, verbose: bool):
    # Deep copies: loadRes adds fields (area, id) to the detections, and each backend indexes its own copy.
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = coco_cls()
        gt.dataset = copy.deepcopy(gt_dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = eval_cls(gt, dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    stats = list(evaluator.stats[:12])
    if verbose:  # our own table: faster-coco-eval logs its summary instead of printing it
        print(format_summary(dict(zip(METRIC_NAMES, stats))))
    return stats


def format_summary(metrics: dict[str, float]) -> str:
    """The standard 12-line summary table of precomputed metrics."""
    return "\n".join(f" {line} = {metrics[name]:0.3f}" for line, name in zip(_SUMMARY_LINES, METRIC_NAMES))
