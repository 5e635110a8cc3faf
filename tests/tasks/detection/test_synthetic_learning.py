"""The default `python -m tasks.detection fit` (synthetic shapes, mobilenet_v2) visibly learns."""

import pytest
import torch

from tasks.detection.cli import main as cli_main
from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.datasets import SyntheticDetectionShapes, collate
from tasks.detection.module import DetectionModule
from tasks.detection.transforms import train_transform


def test_synthetic_objects_are_large_separate_and_coloured():
    ds = SyntheticDetectionShapes(32, image_size=96, seed=5)
    for record in ds.records:
        sides = record.boxes[:, 2:] - record.boxes[:, :2]
        assert 1 <= len(record.boxes) <= 3
        assert (sides >= 0.2 * 96 * 0.85).all() and (sides <= 0.5 * 96 * 1.16).all()
        for i in range(len(record.boxes)):  # no two boxes overlap
            for j in range(i):
                a, b = record.boxes[i], record.boxes[j]
                assert a[0] >= b[2] or b[0] >= a[2] or a[1] >= b[3] or b[1] >= a[3]
    # Each class has its own dominant colour channel: red squares, green discs, blue triangles.
    image, record = ds.load_image(ds.records[0]), ds.records[0]
    x1, y1, x2, y2 = (int(v) for v in record.boxes[0])
    centre = image[(y1 + y2) // 2 + 2, (x1 + x2) // 2]  # the triangle's centre is inside it too
    assert centre.argmax() == record.labels[0] - 1 and centre.max() > 150


def test_synthetic_defaults_are_light():
    data = DetectionDataModule()
    assert (data.image_size, data.augment) == (192, "flip")
    assert DetectionDataModule(dataset="voc", root="x").augment == "ssd"
    with pytest.raises(ValueError, match="augment must be one of"):
        DetectionDataModule(augment="heavy")


def test_default_model_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    model = DetectionModule(num_classes=4)
    ds = SyntheticDetectionShapes(8, image_size=96, seed=0, transform=train_transform(96, "none"))
    batch = collate([ds[i] for i in range(8)])
    images, targets = batch["image"], batch["targets"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=model.hparams.lr)
    model.train()
    losses = []
    for _ in range(8):
        loss = model._loss(images, targets)[0]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_default_fit_reaches_clear_map(tmp_path):
    """Two epochs of the default command (about 2 minutes on one thread) already find the shapes."""
    cli = cli_main(
        [
            "fit",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    metrics = cli.trainer.callback_metrics
    # Chance is ~0 (random weights score < 0.005); the full default run reaches AP50 ~0.9 (docs/detection.md).
    assert metrics["val/mAP50"] > 0.4, metrics
    assert metrics["val/mAP"] > 0.15, metrics
