"""Real data: a short CPU training run on BCCD (Pascal VOC XML) reaches a clearly non-trivial mAP@0.5."""

import json

import pytest

from tasks.detection.cli import main as cli_main


@pytest.mark.slow
def test_bccd_short_training_learns(shared_data, tmp_path):
    root = shared_data / "detection" / "bccd" / "BCCD"
    args = [
        "--config",
        "configs/detection/voc_bccd_ssdlite_mobilenet_v2.yaml",
        "--data.root",
        str(root),
        "--model.backbone_kwargs",
        '{"width_mult": 0.5}',
        "--data.image_size",
        "192",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        "false",
    ]
    cli = cli_main(["fit", *args, "--trainer.max_epochs", "12", "--trainer.check_val_every_n_epoch", "4"])
    best = cli.trainer.checkpoint_callback.best_model_path
    cli_main(["test", *args, "--ckpt_path", best])
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    # Chance is ~0: three classes, dozens of cells per image. A model that learned nothing scores < 0.01;
    # 6 epochs gave 0.16, the README's 20-epoch recipe 0.32: 12 epochs must clear 0.15 with margin.
    assert metrics["voc_mAP50"] > 0.15, metrics
    assert metrics["AP50"] > 0.15, metrics
