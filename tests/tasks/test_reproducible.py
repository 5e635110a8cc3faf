"""`--seed_everything N` fixes the augmentation and the data order; two seeded deterministic runs are identical."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything

from tasks.common.sampling import EpochSampler
from tasks.depth.datamodule import DepthDataModule
from tasks.detection.datamodule import DetectionDataModule
from tasks.segmentation.cli import main as segmentation_main
from tasks.segmentation.datamodule import SegmentationDataModule
from tests.tasks._runs import TINY

DATA = {
    "depth": (DepthDataModule, {"image_size": (32, 32)}),
    "segmentation": (SegmentationDataModule, {"synthetic_size": 32, "crop_size": (32, 32)}),
    "detection": (DetectionDataModule, {"image_size": 64, "augment": "ssd"}),
}


def first_batches(task: str, seed: int, epoch: int = 0, num_workers: int = 0, batches: int = 2) -> list[dict]:
    seed_everything(seed)
    cls, options = DATA[task]
    data = cls(synthetic_train_size=8, batch_size=2, num_workers=num_workers, **options)
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == batches:
            break
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["image"], y["image"]) and x["name"] == y["name"] for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("task", sorted(DATA))
def test_the_seed_fixes_the_augmented_batches_and_their_order(task):
    reference = first_batches(task, 3)
    # Another global RNG state in between changes nothing: the pipelines are seeded per sample.
    torch.rand(5)
    assert same(first_batches(task, 3), reference)
    assert not same(first_batches(task, 4), reference)  # another seed: another order / augmentation
    assert not same(first_batches(task, 3, epoch=1), reference)  # each epoch its own


def test_workers_give_the_same_batches_as_the_main_process():
    assert same(first_batches("segmentation", 3, num_workers=2), first_batches("segmentation", 3))


def test_the_sampler_shards_one_permutation_and_resumes_inside_it():
    dataset = list(range(10))
    whole = [i for _, i in EpochSampler(dataset, seed=5, epoch=2)]
    shards = [[i for _, i in EpochSampler(dataset, 2, r, seed=5, epoch=2)] for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(whole) == dataset  # 10 = 5 + 5: no padding
    assert shards[0] == whole[0::2]  # the same permutation, split as DistributedSampler splits it
    resumed = EpochSampler(dataset, seed=5, epoch=2, skip=4)
    assert [i for _, i in resumed] == whole[4:]  # continues where the checkpoint left off
    assert [i for _, i in resumed] == whole  # the skip was for that iteration only


@pytest.mark.slow
def test_two_seeded_deterministic_runs_give_identical_metrics(tmp_path, monkeypatch):
    args = [
        "fit",
        "--data.synthetic_train_size=8",
        "--data.synthetic_val_size=3",
        "--data.batch_size=2",
        *TINY["segmentation"],
        "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
        "--seed_everything=11",
        "--trainer.enable_progress_bar=false",
    ]
    results = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        torch.rand(3)  # a different global RNG state before each run: the seed must fix everything
        cli = segmentation_main(args)
        results.append({k: v.item() for k, v in cli.trainer.callback_metrics.items()})
    assert results[0] == results[1]
    assert {"train/loss", "val/loss", "val/mIoU"} <= results[0].keys()
