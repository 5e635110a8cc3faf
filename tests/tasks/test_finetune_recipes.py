"""Fine-tuning recipes from the real ImageNet weights (LITEDENSE_TEST_WEIGHTS) on the sample data (LITEDENSE_TEST_DATA).

- The smp peer of `benchmarks/finetune_peers.py` starts from the same weights as ours: torchvision's
  MobileNetV2 file loads into smp's `mobilenet_v2` encoder with every key matched, and at output stride
  16 that encoder's maps equal our converted backbone's at every level both return.
- Slow: each recipe (configs/*/*_finetune.yaml) beats the from-scratch figure the README quotes, and the
  CamVid one is at least level with smp's DeepLabV3Plus trained the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from backbones import create_backbone
from benchmarks.finetune_peers import load_smp_encoder_weights
from benchmarks.finetune_peers import main as finetune

REPO = Path(__file__).parents[2]
MOBILENET_V2 = "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def weights() -> Path:
    root = os.environ.get("LITEDENSE_TEST_WEIGHTS")
    if not root or not (Path(root) / MOBILENET_V2).is_file():
        pytest.skip("real ImageNet weights not found: set LITEDENSE_TEST_WEIGHTS to the shared/weights folder")
    return Path(root) / MOBILENET_V2


def test_smp_encoder_takes_every_key_and_equals_our_backbone(weights):
    encoder = smp.encoders.get_encoder("mobilenet_v2", in_channels=3, depth=5, weights=None, output_stride=16)
    file_keys = torch.load(weights, map_location="cpu", weights_only=True).keys()
    assert load_smp_encoder_weights(encoder, str(weights)) == len(file_keys) - 2  # all but classifier.1.{weight,bias}
    ours = create_backbone("mobilenet_v2", pretrained=str(weights), output_stride=16).eval()
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = encoder.eval()(images)[1:5]  # strides 2, 4, 8, 16 (the fifth is the 1280-channel conv)
        mine = ours(images)[:4]  # the same stage outputs; ours ends with the 320-channel stage instead
    for level, (a, b) in enumerate(zip(mine, theirs)):
        assert a.shape == b.shape, level
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"level {level}")


def test_smp_encoder_refuses_a_file_of_another_layout(tmp_path):
    encoder = smp.encoders.get_encoder("mobilenet_v2", in_channels=3, depth=5, weights=None)
    path = tmp_path / "other.pth"
    torch.save({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, path)  # timm's key, not torchvision's
    with pytest.raises(ValueError, match=r"other\.pth.*torchvision.*missing"):
        load_smp_encoder_weights(encoder, str(path))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_smp_encoder_weights(encoder, str(tmp_path / "absent.pth"))


def _run(model: str, task: str, config: str, root: Path, weights: Path, test_best: bool = False) -> dict:
    """One run of benchmarks/finetune_peers.py; its summary (best score, epoch times, test metrics)."""
    args = [
        *(["--test-best"] if test_best else []),
        model,
        task,
        "fit",
        "--config",
        str(REPO / "configs" / task / config),
        "--data.root",
        str(root),
    ]
    args += ["--model.pretrained", str(weights), "--trainer.enable_progress_bar", "false"]
    return finetune(args)


@pytest.mark.slow
def test_camvid_finetune_beats_scratch_and_is_level_with_smp(shared_data, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, config = shared_data / "segmentation" / "camvid", "camvid_deeplabv3plus_mobilenet_v2_finetune.yaml"
    ours = _run("litedense", "segmentation", config, root, weights)["best_score"]
    peer = _run("smp-deeplabv3plus", "segmentation", config, root, weights)["best_score"]
    # From scratch (README): 27.6% val mIoU with the same data, resolution and epochs.
    assert ours > 0.276 + 0.10, ours
    assert ours >= peer - 0.01, (ours, peer)


@pytest.mark.slow
def test_bccd_finetune_beats_scratch(shared_data, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = shared_data / "detection" / "bccd" / "BCCD"
    config = "voc_bccd_ssdlite_mobilenet_v2_finetune.yaml"
    result = _run("litedense", "detection", config, root, weights, test_best=True)
    # From scratch (README): test VOC mAP@0.5 0.319.
    assert result["test"]["test/voc_mAP50"] > 0.319, result


@pytest.mark.slow
def test_sevenscenes_finetune_beats_scratch(shared_data, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = shared_data / "depth" / "sevenscenes"
    config = "sevenscenes_fastdepth_mobilenet_v2_finetune.yaml"
    result = _run("litedense", "depth", config, root, weights, test_best=True)
    # From scratch (README): AbsRel 0.178, delta1 0.640 on the last 60 frames (also the test split here).
    assert result["best_score"] < 0.178, result
    assert result["test"]["test/delta1"] > 0.640, result
