from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.common.cli import LiteDenseCLI
from tasks.depth import DepthDataModule, DepthModule, main, trainer_defaults

CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "depth").glob("*.yaml"))
TINY = [
    "--data.image_size=[64, 64]",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--data.synthetic_train_size=2",
    "--data.synthetic_val_size=2",
]


def test_main_command_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--backbone", "mobilenet_v2", "--trainer.fast_dev_run", "true", *TINY])
    assert cli.model.hparams.backbone == "mobilenet_v2"
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/abs_rel", "val/delta1", "val/rmse"):
        assert key in metrics and np.isfinite(metrics[key].item()), key


def test_backbone_shortcut_and_fusion_head_on_inverse_depth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--model.head", "fusion", "--model.output", "inverse", "--model.loss", "ssi"]
    cli = main([*args, "--trainer.fast_dev_run", "true", *TINY])
    assert 0.0 <= cli.trainer.callback_metrics["val/delta1"].item() <= 1.0


def test_predict_writes_16bit_and_colour_pngs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            images / f"{name}.jpg"
        )
    main(["predict", "--trainer.fast_dev_run", "true", *TINY, f"--data.predict_dir={images}"])
    out = tmp_path / "predictions" / "depth"
    depth = Image.open(out / "a_depth.png")
    assert depth.mode.startswith("I;16") and depth.size == (64, 64)
    assert 0 < np.asarray(depth).max() <= 10_000  # millimetres, within max_depth
    assert Image.open(out / "b_color.png").mode == "RGB"
    assert not list(out.glob("*.tmp*"))


def test_loss_output_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not fit output"):
        DepthModule(loss="ssi", output="metric")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_configs_parse_and_instantiate(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Configs that download ImageNet weights are instantiated without them (offline).
    cli = LiteDenseCLI(
        DepthModule,
        DepthDataModule,
        trainer_defaults=trainer_defaults(),
        run=False,
        args=["--config", str(config), "--model.pretrained", "false"],
    )
    assert isinstance(cli.model, DepthModule) and isinstance(cli.datamodule, DepthDataModule)
    assert cli.datamodule.hparams.dataset != "synthetic"
