"""The real-data run of the README: CamVid at reduced resolution, a few CPU minutes, from random weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.segmentation.cli import main
from tasks.segmentation.datasets import FORMATS

CONFIG = Path(__file__).parents[3] / "configs" / "segmentation" / "camvid_lraspp_mobilenet_v2.yaml"


def majority_class_miou(root: Path) -> float:
    """mIoU of predicting the most frequent training class everywhere on val (11 classes, 11 ignored)."""
    train = np.zeros(12, np.int64)
    for sample in FORMATS["camvid"][0](root, "train"):
        train += np.bincount(np.asarray(Image.open(sample.mask)).ravel(), minlength=12)[:12]
    val = np.zeros(12, np.int64)
    for sample in FORMATS["camvid"][0](root, "val"):
        val += np.bincount(np.asarray(Image.open(sample.mask)).ravel(), minlength=12)[:12]
    majority, val = int(train[:11].argmax()), val[:11]
    # That class: TP = its pixels, FP = all other labelled pixels, so IoU = its share; every other class 0.
    return val[majority] / val.sum() / np.count_nonzero(val)


@pytest.mark.slow
def test_camvid_short_run_beats_majority_baseline(shared_data, tmp_path, monkeypatch):
    root = shared_data / "segmentation" / "camvid"
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(CONFIG), "--data.root", str(root), "--trainer.enable_progress_bar", "false"])
    best = cli.trainer.checkpoint_callback.best_model_score.item()
    baseline = majority_class_miou(root)
    assert baseline < 0.05
    assert best > max(0.15, 4 * baseline), (best, baseline)
