import math

import pytest
import torch

from backbones import list_backbones
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule


@pytest.mark.parametrize("head", ["deeplabv3_mobile", "deeplabv3", "deeplabv3plus", "lraspp"])
def test_logits_at_input_size(head):
    model = SegmentationModule(num_classes=3, head=head, output_stride=8).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 50, 38))
    assert logits.shape == (1, 3, 50, 38)


def test_training_on_synthetic_default_lowers_loss():
    torch.manual_seed(0)
    dm = SegmentationDataModule(synthetic_train_size=16, synthetic_size=64, crop_size=(64, 64), batch_size=8)
    dm.setup("fit")
    model = SegmentationModule(num_classes=dm.num_classes, head="lraspp", aux_loss_weight=0.4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = list(dm.train_dataloader())
    losses = []
    model.train()
    for _ in range(6):
        for batch in batches:
            loss = model.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses


def test_batch_of_one_trains_with_image_pooling():
    model = SegmentationModule(num_classes=3, head="deeplabv3").train()
    batch = {"image": torch.randn(1, 3, 64, 64), "mask": torch.randint(0, 3, (1, 64, 64))}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)


def test_all_ignored_crop_gives_zero_loss_not_nan():
    model = SegmentationModule(num_classes=3).train()
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.full((2, 32, 32), 255)}
    loss = model.training_step(batch, 0)
    assert loss.item() == 0.0
    loss.backward()


def test_head_is_sized_from_the_data_at_setup():
    class Trainer:
        datamodule = SegmentationDataModule("camvid", root="unused")

    model = SegmentationModule()
    model._trainer = Trainer()
    model.setup("fit")
    assert model.hparams.num_classes == 11 and model.head.classifier.out_channels == 11
    wrong = SegmentationModule(num_classes=21)
    wrong._trainer = Trainer()
    with pytest.raises(ValueError, match="predicts 21 classes but the data has 11"):
        wrong.setup("fit")


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_schedules_decay_to_zero(schedule):
    class Trainer:
        estimated_stepping_batches = 10

    model = SegmentationModule(num_classes=2, schedule=schedule, optimizer="sgd", lr=0.1)
    model._trainer = Trainer()
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.02 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    expected = {
        "poly": [(1 - s / 10) ** 0.9 for s in range(10)],
        "cosine": [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)],
    }
    assert lrs == pytest.approx([0.1 * f for f in expected[schedule]])
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # norms and biases


def test_unknown_backbone_and_head_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone"):
        SegmentationModule(num_classes=2, backbone="mobilenet_v9")
    with pytest.raises(ValueError, match="unknown segmentation head"):
        SegmentationModule(num_classes=2, head="pspnet")
    assert "mobilenet_v2" in list_backbones()
