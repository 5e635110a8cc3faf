"""Depth-specific module behaviour (the shared commands are tested in tests/tasks/test_skeleton.py)."""

import pytest
import torch

from heads.depth import FusionDecoder
from tasks.depth.cli import main
from tasks.depth.module import DepthModule

TINY = [
    "--data.image_size=[64, 64]",
    "--data.batch_size=2",
    "--data.synthetic_train_size=2",
    "--data.synthetic_val_size=2",
]


def test_backbone_shortcut_and_fusion_head_on_inverse_depth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--backbone",
        "shufflenet_v2",
        "--model.head",
        "fusion",
        "--model.output",
        "inverse",
        "--model.loss",
        "ssi",
    ]
    cli = main([*args, "--trainer.fast_dev_run", "true", *TINY])
    assert cli.model.hparams.backbone == "shufflenet_v2" and isinstance(cli.model.head, FusionDecoder)
    assert torch.isfinite(cli.trainer.callback_metrics["val/abs_rel"])


def test_inverse_output_is_aligned_by_scale_and_shift_before_the_metrics():
    model = DepthModule(output="inverse", loss="ssi", max_depth=10.0)
    depth = torch.rand(2, 1, 8, 8) * 4 + 1  # 1..5 m
    depth[0, 0, 0, 0] = 0.0  # an invalid pixel takes no part in the fit
    pred = 3.0 / depth.clamp_min(1e-6) + 0.5  # inverse depth up to scale 3 and shift 0.5
    aligned = model.to_depth(pred, depth)
    valid = depth > 0
    torch.testing.assert_close(aligned[valid], depth[valid], rtol=1e-4, atol=1e-4)
    # Without ground truth (predict), relative depth is 1 / output, unaligned.
    torch.testing.assert_close(model.to_depth(pred), 1.0 / pred)


def test_loss_output_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not fit output"):
        DepthModule(loss="ssi", output="metric")


def test_one_cycle_has_its_own_warmup():
    with pytest.raises(ValueError, match="one_cycle"):
        DepthModule(warmup_epochs=1.0)
