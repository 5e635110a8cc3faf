"""The shared CLI's --backbone shortcut."""

import lightning as L
import yaml

from tasks.common.cli import LiteDenseCLI


class TinyModel(L.LightningModule):
    def __init__(self, backbone: str = "mobilenet_v2", lr: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.lr = lr


class TinyData(L.LightningDataModule):
    def __init__(self, batch_size: int = 2):
        super().__init__()
        self.batch_size = batch_size


def build(args):
    return LiteDenseCLI(TinyModel, TinyData, run=False, args=args, save_config_callback=None)


def test_backbone_shortcut_sets_model_backbone():
    assert build([]).model.backbone == "mobilenet_v2"
    assert build(["--backbone", "ghostnet"]).model.backbone == "ghostnet"


def test_backbone_shortcut_overrides_config_file(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"model": {"backbone": "shufflenet_v2", "lr": 0.5}}))
    cli = build(["--config", str(config), "--backbone", "ghostnet"])
    assert (cli.model.backbone, cli.model.lr) == ("ghostnet", 0.5)
    assert build(["--config", str(config)]).model.backbone == "shufflenet_v2"
