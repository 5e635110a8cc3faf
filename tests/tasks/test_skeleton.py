"""One tester for the three tasks: the same commands, checkpoints, predict convention and configs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tasks.common.cli import LiteDenseCLI
from tasks.common.module import TaskModule
from tasks.depth.cli import main as depth_main
from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule
from tasks.detection.cli import main as detection_main
from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.module import DetectionModule
from tasks.segmentation.cli import main as segmentation_main
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule

REPO = Path(__file__).parents[2]
# The same tiny synthetic run for every task: two training images (one step an epoch), two evaluation images.
COMMON = ["--data.synthetic_train_size=2", "--data.synthetic_val_size=2", "--data.batch_size=2"]


@dataclass
class Task:
    main: object
    module: type[TaskModule]
    datamodule: type
    tiny: list[str]
    # Files `predict` must write for an image called "a" (and nothing else).
    outputs: tuple[str, ...]
    extra_test_metrics: tuple[str, ...] = field(default_factory=tuple)


TASKS = {
    "depth": Task(
        depth_main, DepthModule, DepthDataModule, ["--data.image_size=[32, 32]"], ("a_depth.png", "a_color.png")
    ),
    "segmentation": Task(
        segmentation_main,
        SegmentationModule,
        SegmentationDataModule,
        ["--data.synthetic_size=32", "--data.crop_size=[32, 32]"],
        ("a.png",),
    ),
    "detection": Task(
        detection_main,
        DetectionModule,
        DetectionDataModule,
        ["--data.image_size=64", "--model.extra_channels=[16, 16, 8, 8]", "--model.score_thresh=0.0"],
        ("a.jpg",),
    ),
}


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 29), dtype=np.uint8)).save(folder / "b.png")  # grayscale
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("name", sorted(TASKS))
def test_fit_validate_test_predict_on_the_synthetic_default(name, tmp_path, monkeypatch):
    task = TASKS[name]
    monkeypatch.chdir(tmp_path)
    args = [*COMMON, *task.tiny]
    # Three epochs, validated only after the second: the best checkpoint is epoch 1's, last.ckpt epoch 2's.
    cli = task.main(["fit", *args, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=2"])
    assert isinstance(cli.model, task.module)
    monitor = task.module.monitor
    assert np.isfinite(cli.trainer.callback_metrics[monitor].item())
    checkpoints = tmp_path / "runs" / name / "version_0" / "checkpoints"
    files = sorted(p.name for p in checkpoints.iterdir())
    assert len(files) == 2 and "last.ckpt" in files, files
    (best,) = [f for f in files if f != "last.ckpt"]
    assert best.startswith("best-epoch01-") and best.endswith(".ckpt"), best
    last = checkpoints / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 2  # the latest state, not the best

    validated = task.main(["validate", *args, f"--ckpt_path={last}"])
    assert monitor in validated.trainer.callback_metrics
    tested = task.main(["test", *args, f"--ckpt_path={last}"])
    assert monitor.replace("val/", "test/") in tested.trainer.callback_metrics

    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    task.main(
        ["predict", *args, f"--ckpt_path={last}", f"--data.predict_dir={photos}", f"--data.predict_output_dir={out}"]
    )
    expected = {f.replace("a", stem, 1) for f in task.outputs for stem in ("a", "b")}
    if name == "detection":
        expected.add("predictions.json")
    assert {p.name for p in out.iterdir()} == expected  # every image, no other file (no leftover temporary)


def test_predict_without_an_output_dir_writes_into_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos = _photos(tmp_path / "photos")
    task = TASKS["depth"]
    task.main(["predict", *COMMON, *task.tiny, f"--data.predict_dir={photos}"])
    written = tmp_path / "runs" / "depth" / "version_0" / "predictions"
    assert {p.name for p in written.iterdir()} == {"a_depth.png", "a_color.png", "b_depth.png", "b_color.png"}
    depth = Image.open(written / "a_depth.png")
    assert depth.mode.startswith("I;16") and depth.size == (50, 37)  # the photo's size, not the network's 32x32
    assert 0 < np.asarray(depth).max() <= 10_000  # millimetres, within max_depth


def test_predict_without_a_folder_predicts_the_test_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = TASKS["segmentation"]
    task.main(["predict", *COMMON, *task.tiny, "--model.num_classes=4", "--data.predict_output_dir=out"])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"synthetic_3_000000.png", "synthetic_3_000001.png"}


CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))


def test_every_task_has_configs():
    assert {c.parent.name for c in CONFIGS} == set(TASKS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_config_instantiates_its_model(config, tmp_path, monkeypatch):
    text = config.read_text()
    # Each recipe names where its hyperparameters come from, in its header comment.
    assert re.search(r"^# Sources?:", text, re.MULTILINE), f"{config} does not cite its sources"
    task = TASKS[config.parent.name]
    monkeypatch.chdir(tmp_path)
    # Pretrained weights cannot be downloaded here; everything else is the recipe as written. An unknown
    # backbone fails here (it is not skipped).
    cli = LiteDenseCLI(
        task.module, task.datamodule, run=False, args=["--config", str(config), "--model.pretrained", "false"]
    )
    model, data = cli.model, cli.datamodule
    recipe = yaml.safe_load(text)
    assert model.hparams.backbone == recipe["model"]["backbone"]
    assert data.hparams.dataset == recipe["data"]["dataset"] != "synthetic"
    if model.sized_by_data and model.head is None:
        # The class count: segmentation knows it by dataset name, VOC detection from its class list
        # (+ background); a recipe that reads it from annotations (BCCD) gets one class + background.
        classes = data.num_classes
        if classes is None:
            classes = len(data.hparams.get("classes") or ["object"]) + 1
        model._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=classes))
        model.setup("fit")
    assert model.head is not None
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
