from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from backbones import list_backbones
from tasks.common.cli import LiteDenseCLI
from tasks.segmentation.cli import main, trainer_defaults
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModel

CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "segmentation").glob("*.yaml"))
SMALL = ["--data.synthetic_size", "48", "--data.crop_size", "[48, 48]", "--data.batch_size", "2"]


def test_there_are_the_three_recipes():
    names = {c.name for c in CONFIGS}
    assert {"voc_deeplabv3_mobilenet_v2.yaml", "cityscapes_lraspp_mobilenet_v3_large.yaml"} <= names
    assert any(n.startswith("camvid_") for n in names)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_parses_and_instantiates(config, tmp_path, monkeypatch):
    assert "# Sources" in config.read_text() or "paper" in config.read_text().lower()  # cites its hyperparameters
    backbone = yaml.safe_load(config.read_text())["model"]["backbone"]
    if backbone not in list_backbones():
        pytest.skip(f"{backbone} is not registered yet")
    monkeypatch.chdir(tmp_path)
    # pretrained weights cannot be downloaded here; everything else is the recipe as written.
    cli = LiteDenseCLI(
        SegmentationModel,
        SegmentationDataModule,
        trainer_defaults=trainer_defaults(),
        run=False,
        args=["--config", str(config), "--model.pretrained", "false"],
    )
    model, data = cli.model, cli.datamodule
    model._trainer = SimpleNamespace(datamodule=data)
    model.setup("fit")  # sizes the head from the dataset's classes
    assert model.hparams.num_classes == data.num_classes
    assert model.hparams.head == yaml.safe_load(config.read_text())["model"]["head"]


def test_fit_fast_dev_run_with_backbone_shortcut(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--backbone", "mobilenet_v2", "--trainer.fast_dev_run", "1", *SMALL])
    assert cli.model.backbone.name == "mobilenet_v2"
    assert cli.trainer.state.finished
    assert np.isfinite(cli.trainer.callback_metrics["val/mIoU"].item())


def test_predict_writes_palette_pngs_at_image_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 29), dtype=np.uint8)).save(images / "b.png")  # grayscale
    out = tmp_path / "masks"
    main(
        [
            "predict",
            "--data.predict_dir", str(images),
            "--data.eval_batch_size", "2",
            "--model.num_classes", "4",
            "--data.predict_output_dir", str(out),
        ]
    )  # fmt: skip
    written = {p.name: Image.open(p) for p in out.glob("*.png")}
    assert set(written) == {"a.png", "b.png"}
    assert written["a.png"].mode == "P" and written["a.png"].size == (50, 37) and written["b.png"].size == (29, 40)
    assert np.asarray(written["a.png"]).max() < 4
    assert not list(out.glob("tmp*"))
