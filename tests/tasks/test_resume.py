"""Resume that loses nothing (SIGKILL mid-epoch, `fit --ckpt_path last`), and `--ckpt_path` errors before training."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch import Callback

from tasks.common.checkpoints import AtomicCheckpoint
from tasks.depth.cli import main as depth_main
from tasks.segmentation.cli import main as segmentation_main
from tests.tasks._runs import COMMON, TINY, check, epoch_results, run_dirs, run_task, step_losses


class KillAtStep(Callback):
    """SIGKILL this process when optimizer step `step` is about to run (no hook, no clean-up runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


# 8 images at batch 2: 4 steps an epoch, 3 epochs; last.ckpt also every 2 steps (mid-epoch at 2, 6, 10).
RUN = [
    *COMMON,
    *TINY["segmentation"],
    "--trainer.max_epochs=3",
    "--trainer.deterministic=true",
    "--seed_everything=7",
    "--model.save_every_n_steps=2",
    "--model.head=deeplabv3",  # ASPP dropout: the global RNG state must be restored too
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_last_equals_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir(), straight.mkdir()
    kill = '--trainer.callbacks+={"class_path": "tests.tasks.test_resume.KillAtStep", "init_args": {"step": 7}}'
    result = run_task("segmentation", ["fit", *RUN, kill], killed)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    (first,) = run_dirs(killed, "segmentation")
    files = sorted(p.name for p in (first / "checkpoints").iterdir())
    assert "last.ckpt" in files and not [f for f in files if f.endswith(".partial")], files
    saved = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The last save before the kill: step 6, in the middle of epoch 1 (its first 2 of 4 batches done).
    assert (saved["global_step"], saved["epoch"]) == (6, 1)
    assert saved["litedense"]["task"] == "segmentation"
    assert saved["SegmentationDataModule"]["resume_position"] == {"epoch": 1, "batches": 2}

    resumed = check(run_task("segmentation", ["fit", *RUN, "--ckpt_path=last"], killed))
    assert "resuming from" in resumed.stdout and "last.ckpt" in resumed.stdout
    check(run_task("segmentation", ["fit", *RUN], straight))

    (second,) = run_dirs(killed, "segmentation")[1:]
    (reference,) = run_dirs(straight, "segmentation")
    after, full = step_losses(second), step_losses(reference)
    assert sorted(after) == list(range(6, 12))  # continues at the saved step, to the end of the schedule
    # Same weights, optimizer, schedule, data order, augmentation and dropout: the same losses, exactly.
    assert after == {step: full[step] for step in after}
    assert epoch_results(second, "val") == epoch_results(reference, "val")
    final = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (final["global_step"], final["epoch"]) == (12, 2)


def test_a_checkpoint_is_renamed_into_place_whole(tmp_path):
    """The rename is the only way a .ckpt appears: what is written first carries another name."""
    seen = []

    class Recorder:
        is_global_zero = True
        global_step = 3
        loggers = []

        class strategy:  # noqa: N801
            @staticmethod
            def barrier(name):
                seen.append(sorted(p.name for p in tmp_path.iterdir()))

        def save_checkpoint(self, path, weights_only=False):
            torch.save({"state_dict": {}}, path)

    target = tmp_path / "last.ckpt"
    AtomicCheckpoint(dirpath=tmp_path)._save_checkpoint(Recorder(), str(target))
    assert seen == [["last.ckpt"]]  # renamed before the barrier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left


ARGS = ["--data.synthetic_train_size=2", "--data.synthetic_val_size=2", "--data.batch_size=2", *TINY["segmentation"]]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_checkpoint_of_another_task_is_refused_in_one_line(subcommand, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "depth.ckpt"
    torch.save({"state_dict": {}, "litedense": {"task": "depth"}, "hyper_parameters": {"max_depth": 10.0}}, other)
    with pytest.raises(SystemExit, match=r"depth\.ckpt is a checkpoint of task 'depth', not 'segmentation'"):
        segmentation_main([subcommand, *ARGS, f"--ckpt_path={other}"])
    assert not (tmp_path / "runs").exists()  # nothing was built or trained


def test_an_old_checkpoint_tells_its_task_by_its_hyperparameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"ignore_index": 255, "lr": 0.1}}, other)
    with pytest.raises(SystemExit, match="checkpoint of task 'segmentation', not 'depth'"):
        depth_main(["validate", f"--ckpt_path={other}"])


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "litedense": {"task": "segmentation"}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(SystemExit, match=r"cut\.ckpt .* cannot be read: it is truncated or not a PyTorch checkpoint"):
        segmentation_main(["fit", *ARGS, f"--ckpt_path={cut}"])
    assert not (tmp_path / "runs").exists()


def test_a_missing_checkpoint_and_a_missing_last_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*nowhere\.ckpt"):
        segmentation_main(["validate", *ARGS, f"--ckpt_path={tmp_path / 'nowhere.ckpt'}"])
    with pytest.raises(SystemExit, match="--ckpt_path last: no last.ckpt under"):
        segmentation_main(["fit", *ARGS, "--ckpt_path=last"])
    assert not (tmp_path / "runs").exists()
