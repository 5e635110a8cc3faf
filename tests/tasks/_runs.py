"""Running a task's command line in a fresh process (DDP launches re-run the command) and reading its logs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
# Tiny synthetic runs: 8 training images at batch 2, 5 evaluation images (odd: the sampler pads under DDP).
TINY = {
    "depth": ["--data.image_size=[32, 32]"],
    "segmentation": ["--data.synthetic_size=32", "--data.crop_size=[32, 32]"],
    "detection": ["--data.image_size=64", "--model.extra_channels=[16, 16, 8, 8]", "--model.score_thresh=0.0"],
}
COMMON = [
    "--data.synthetic_train_size=8",
    "--data.synthetic_val_size=5",
    "--data.batch_size=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--trainer.logger=CSVLogger",
    "--trainer.logger.save_dir=logs",
]
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]


def run_task(task: str, args: list[str], cwd: Path, *, launcher: list[str] | None = None, timeout: int = 400):
    """`python -m tasks.<task> ARGS` (or `launcher -m tasks.<task> ARGS`) in `cwd`; the completed process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [*(launcher or [sys.executable]), "-m", f"tasks.{task}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Fail with the command's output tail when it failed."""
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return result


def run_dirs(cwd: Path, task: str) -> list[Path]:
    """The CSVLogger's version folders of a task, oldest first."""
    root = cwd / "logs" / task
    return sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def read_metrics(version: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with open(version / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_results(version: Path, prefix: str) -> dict[str, float]:
    """The last logged value of every metric whose name starts with `prefix` (e.g. "val/")."""
    out: dict[str, float] = {}
    for row in read_metrics(version):
        for key, value in row.items():
            if key.startswith(prefix) and value not in ("", None):
                out[key] = float(value)
    return out


def step_losses(version: Path, key: str = "train/loss") -> dict[int, float]:
    """{global step: training loss} of every logged step."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(version) if r.get(key) not in ("", None)}
