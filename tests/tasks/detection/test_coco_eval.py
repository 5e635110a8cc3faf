import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.detection.coco_eval import METRIC_NAMES, coco_evaluate
from tasks.detection.evaluate import main as evaluate_main


def _perturbed_detections(gt_path, seed=0):
    """Ground truth moved, rescaled, relabelled and dropped at random, with random scores and false positives."""
    data = json.loads(gt_path.read_text())
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in data["categories"]]
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    dets = []
    for ann in data["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        x, y = x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h
        w, h = w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        dets.append(
            {"image_id": ann["image_id"], "category_id": cat, "bbox": [x, y, w, h], "score": float(rng.random())}
        )
    for image_id, (width, height) in sizes.items():
        for _ in range(3):
            w, h = rng.uniform(5, width / 2), rng.uniform(5, height / 2)
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                    "score": float(rng.random() * 0.5),
                }
            )
    return dets


def _pycocotools_stats(gt_path, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture(scope="module")
def coco_case(shared_data, tmp_path_factory):
    gt_path = shared_data / "detection" / "coco_mini" / "annotations" / "instances_val2017.json"
    dets = _perturbed_detections(gt_path)
    results = tmp_path_factory.mktemp("coco") / "detections.json"
    results.write_text(json.dumps(dets))
    return gt_path, results, dets


def test_faster_coco_eval_backend_equals_pycocotools_on_real_annotations(coco_case):
    # The parity claim: a second implementation gives pycocotools' 12 numbers.
    pytest.importorskip("faster_coco_eval")
    gt_path, results, dets = coco_case
    reference = _pycocotools_stats(gt_path, dets)
    ours = coco_evaluate(gt_path, results, backend="faster_coco_eval", verbose=False)
    assert 0.2 < ours["AP"] < 0.9  # a non-trivial case: the comparison means something
    for name, ref in zip(METRIC_NAMES, reference):
        assert abs(ours[name] - ref) <= 1e-9, (name, ours[name], ref)


def test_wrapper_feeds_pycocotools_unchanged_inputs(coco_case):
    # Not a parity check (the default backend *is* pycocotools): our file reading, copies and image-id
    # handling must leave pycocotools' result as a direct call gives it.
    gt_path, results, dets = coco_case
    reference = _pycocotools_stats(gt_path, dets)
    ours = coco_evaluate(gt_path, results, backend="pycocotools", verbose=False)
    assert list(ours) == list(METRIC_NAMES)
    assert 0.2 < ours["AP"] < 0.9  # a non-trivial case: the comparison means something
    for name, ref in zip(METRIC_NAMES, reference):
        assert abs(ours[name] - ref) <= 1e-9, (name, ours[name], ref)


def test_evaluate_cli_writes_full_precision_json(coco_case, tmp_path, capsys):
    gt_path, results, dets = coco_case
    out = tmp_path / "sub" / "metrics.json"
    evaluate_main(["--gt", str(gt_path), "--results", str(results), "--json", str(out)])
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert set(written) == set(METRIC_NAMES)
    reference = _pycocotools_stats(gt_path, dets)
    assert written["AP"] == reference[0] and written["ARl"] == reference[11]


def test_results_of_another_annotation_set_fail_clearly(coco_case, tmp_path, capsys):
    gt_path, _, dets = coco_case
    other = [dict(d, image_id=d["image_id"] + 10**9) for d in dets[:5]]
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        evaluate_main(["--gt", str(gt_path), "--results", str(bad)])
    assert "another annotation set" in capsys.readouterr().err
    with pytest.raises(ValueError, match="category id"):
        coco_evaluate(gt_path, [dict(dets[0], category_id=0)], verbose=False)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="other.json"):
        coco_evaluate(gt_path, bad, verbose=False)
