import numpy as np
import pytest

from tasks.detection.voc_eval import average_precision, voc_map


def test_average_precision_all_point():
    # Precision envelope: 1.0 up to recall 0.5, then 0.5 up to recall 1.0.
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.5])) == pytest.approx(0.75)


def test_voc_map_hand_made_with_difficult():
    gt = [
        {"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [1, 1], "difficult": [False, True]},
        {"image_id": 2, "boxes": [[0, 0, 10, 10]], "labels": [2], "difficult": [False]},
    ]
    dets = [
        {
            "image_id": 1,
            "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]],
            "scores": [0.9, 0.8, 0.1],
            "labels": [1, 1, 1],
        },
        {"image_id": 2, "boxes": [[40, 40, 50, 50], [0, 0, 10, 10]], "scores": [0.9, 0.5], "labels": [2, 2]},
    ]
    out = voc_map(dets, gt, num_classes=3)
    # Class 1: the difficult match counts neither way, so AP 1. Class 2: FP then TP -> precision 0.5 at recall 1.
    assert out["AP"] == pytest.approx([1.0, 0.5])
    assert out["mAP"] == pytest.approx(0.75)
