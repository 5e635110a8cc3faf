"""Real-data learning: FastDepth-MobileNetV2 on the 7-Scenes kitchen beats predicting the training mean."""

from pathlib import Path

import pytest
import torch

from tasks.depth.cli import main
from tasks.depth.datamodule import DepthDataModule
from tasks.depth.metrics import DepthMetrics

CONFIG = Path(__file__).parents[3] / "configs" / "depth" / "sevenscenes_fastdepth_mobilenet_v2.yaml"


def training_mean_baseline(root: Path, max_depth: float = 5.0) -> dict[str, float]:
    """Metrics on the last 60 frames of a constant prediction: the mean valid depth of the first 240."""
    dm = DepthDataModule("rgbd_folder", root=str(root), train_range=(0, 240), val_range=(240, 300), num_workers=0)
    dm.setup("validate")
    # The training frames, resized like the validation ones (no augmentation).
    train = DepthDataModule("rgbd_folder", root=str(root), train_range=(0, 240), val_range=(0, 240), num_workers=0)
    train.setup("validate")
    total, count = 0.0, 0
    for sample in train.val_dataloader():
        depth = sample["depth"]
        valid = (depth > 0) & (depth <= max_depth)
        total, count = total + depth[valid].sum().item(), count + valid.sum().item()
    mean = total / count
    metric = DepthMetrics("none", max_depth=max_depth)
    for sample in dm.val_dataloader():
        metric.update(torch.full_like(sample["depth"], mean), sample["depth"])
    return {k: v.item() for k, v in metric.compute().items()} | {"mean": mean}


@pytest.mark.slow
def test_sevenscenes_beats_training_mean(shared_data, tmp_path, monkeypatch):
    root = shared_data / "depth" / "sevenscenes"
    monkeypatch.chdir(tmp_path)
    baseline = training_mean_baseline(root)
    cli = main(["fit", "--config", str(CONFIG), f"--data.root={root}", "--trainer.enable_progress_bar=false"])
    result = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best")[0]
    assert result["val/abs_rel"] < 0.8 * baseline["abs_rel"]
    assert result["val/delta1"] > baseline["delta1"] + 0.1
