import json

import pytest
import torch

from backbones import list_backbones
from tasks.detection.cli import main as cli_main
from tasks.detection.datasets import SyntheticDetectionShapes, collate
from tasks.detection.module import DetectionModule, build_detection_backbone
from tasks.detection.transforms import train_transform


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_trains_a_step(name):
    model = DetectionModule(backbone=name, num_classes=4, extra_channels=(32, 32, 16, 16))
    assert model.backbone.feature_info.strides == (16, 32)
    ds = SyntheticDetectionShapes(2, image_size=96, transform=train_transform(96, augment=False))
    batch = collate([ds[0], ds[1]])
    images, targets = batch["image"], batch["targets"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    losses, reg, logits = model._loss(images, targets)
    assert reg.shape[:2] == logits.shape[:2] and logits.shape[-1] == 4
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.head.class_predictors[0][-1].weight.grad.abs().sum() > 0
    optimizer.step()


def test_paper_taps_or_documented_fallback():
    backbone = build_detection_backbone("mobilenet_v2")
    assert backbone.feature_info.strides == (16, 32)
    assert backbone.feature_info.channels in ((576, 1280), (96, 320))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_detection_backbone("mobilenet_v9")


def test_cli_fit_fast_dev_run_and_validate_writes_results(tmp_path):
    common = [
        "--data.image_size",
        "96",
        "--data.batch_size",
        "4",
        "--data.synthetic_train_size",
        "8",
        "--data.synthetic_val_size",
        "4",
        "--model.extra_channels",
        "[32, 32, 16, 16]",
    ]
    cli_main(["fit", "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path), *common])
    cli_main(
        [
            "validate",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--backbone",
            "mobilenet_v2",
            *common,
        ]
    )
    detections = json.loads((tmp_path / "detections_val.json").read_text())
    metrics = json.loads((tmp_path / "metrics_val.json").read_text())
    assert isinstance(detections, list) and "AP50" in metrics and "voc_mAP50" in metrics
    if detections:
        assert set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
