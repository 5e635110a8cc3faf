"""Two CPU processes (gloo): fit learns, validate gives exactly one process's metrics, detection writes one file.

Each task: `fit` with 2 processes (segmentation through torchrun, the others through Lightning's own
launcher), then `validate` of its last.ckpt with 1 and with 2 processes on 5 images: 2 processes
hold 3 + 3 images, one of them the sampler's repeat of the first, which must not count twice.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from tests.tasks._runs import COMMON, DDP, TINY, check, epoch_results, run_dirs, run_task, step_losses

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo"),
]


@pytest.mark.parametrize("task", sorted(TINY))
def test_two_processes_fit_and_validate_like_one(task, tmp_path):
    args = [*COMMON, *TINY[task], "--model.lr=0.01"]
    fit = [*args, "--trainer.max_epochs=4", "--model.schedule=constant", "--model.warmup_epochs=0"]
    if task == "segmentation":  # the torchrun recipe of docs/training.md, one node
        torchrun = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
        launcher = [*torchrun.split(), "--standalone", "--nproc_per_node=2"]
        check(run_task(task, ["fit", *fit, *DDP], tmp_path, launcher=launcher))
    else:
        check(run_task(task, ["fit", *fit, *DDP], tmp_path))
    (trained,) = run_dirs(tmp_path, task)
    losses = step_losses(trained)
    assert sorted(losses) == list(range(8))  # 4 images a process at batch 2: 2 steps an epoch, 4 epochs
    first, last = [losses[s] for s in (0, 1)], [losses[s] for s in (6, 7)]
    assert sum(last) < sum(first), losses  # it learns
    checkpoint = trained / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 8

    check(run_task(task, ["validate", *args, f"--ckpt_path={checkpoint}"], tmp_path))
    check(run_task(task, ["validate", *args, f"--ckpt_path={checkpoint}", *DDP], tmp_path))
    one, two = run_dirs(tmp_path, task)[1:]
    expected, got = epoch_results(one, "val"), epoch_results(two, "val")
    assert expected and expected.keys() == got.keys()
    loss = "val/loss"
    # Batches group the images differently: cross-entropy is a mean over pixels (equal to rounding), while
    # SILog (over a batch's pixels) and SSD's loss (normalised by a batch's matched boxes) are not sums of
    # per-image terms, so only close.
    assert got.pop(loss) == pytest.approx(expected.pop(loss), rel=1e-6 if task == "segmentation" else 0.05)
    assert got == expected  # every metric, to the last bit
    if task == "detection":  # one results file, every image once, the same as one process's
        files = [json.loads((run / "detections_val.json").read_text()) for run in (one, two)]
        assert {d["image_id"] for d in files[1]} == set(range(1, 6))
        assert sorted(files[1], key=json.dumps) == sorted(files[0], key=json.dumps)
        assert json.loads((two / "metrics_val.json").read_text()) == json.loads((one / "metrics_val.json").read_text())
