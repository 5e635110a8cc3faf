"""Checkpoints: written atomically, `last.ckpt` always the latest state, and checked before anything runs.

- `BestCheckpoint` / `LastCheckpoint`: Lightning's `ModelCheckpoint`, but each file is written under a
  temporary name (`<name>.partial`) and renamed, so a kill never leaves a truncated `.ckpt` that
  `--ckpt_path` or `last` would pick up. `last.ckpt` follows training (every epoch, and every N
  optimizer steps on request), not the best score.
- `rng_state` / `restore_rng_state`: the global random states in plain types (a checkpoint stays
  loadable with `weights_only=True`).
- `check_checkpoint`: a `--ckpt_path` that is missing, truncated, not a Lightning checkpoint, or a
  checkpoint of another task fails with one line naming the file, before any training starts;
  `resolve_last` finds the newest `last.ckpt` of a task's runs for `--ckpt_path last`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any
from weakref import proxy

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

# Hyperparameters only one task's module has: how a checkpoint written before the "litedense" entry
# existed tells its task.
_TASK_HPARAMS = {"depth": "max_depth", "segmentation": "ignore_index", "detection": "neg_pos_ratio"}


class CheckpointError(ValueError):
    """A `--ckpt_path` that cannot be used (the message names the file and the problem)."""


class AtomicCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose files appear whole or not at all (write `<file>.partial`, then rename)."""

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)  # rank 0 writes; ends with a barrier
        if trainer.is_global_zero:
            os.replace(partial, filepath)  # atomic on POSIX within one folder
        trainer.strategy.barrier("AtomicCheckpoint.rename")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class BestCheckpoint(AtomicCheckpoint):
    """The best checkpoint by the task's monitored metric (kept alone: `save_top_k=1`)."""


class LastCheckpoint(AtomicCheckpoint):
    """`last.ckpt`, the latest training state: every training epoch, and every `every_n_steps` steps.

    Lightning's `save_last` follows the monitored checkpoint (written only when the best one is), so
    a crash would repeat every epoch since the last improvement; this one follows training. Lightning
    makes step and epoch triggers exclusive, so the step trigger is ours.

    Args:
        every_n_steps: Also save after every N optimizer steps (0: only at epoch ends).
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        super().__init__(filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True)
        self._enable_version_counter = False  # overwrite last.ckpt rather than write last-v1.ckpt
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Save every `every_n_steps` optimizer steps (the last step of an epoch is left to the epoch end)."""
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if not due or self._should_skip_saving_checkpoint(trainer):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end save follows at once, with the validation that ends the epoch
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global random states, as tensors, lists and ints."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [version, list(state), gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `rng_state` (CUDA states only where this process has as many devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))


def checkpoint_task(checkpoint: dict) -> str | None:
    """The task a checkpoint belongs to ("depth", ...), or None if it says nothing about it."""
    recorded = checkpoint.get("litedense", {}).get("task") if isinstance(checkpoint.get("litedense"), dict) else None
    if recorded:
        return recorded
    hparams = checkpoint.get("hyper_parameters") or {}
    found = [task for task, key in _TASK_HPARAMS.items() if key in hparams]
    return found[0] if len(found) == 1 else None


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint's contents without its tensors' data (memory-mapped), failing with the file named.

    Raises:
        CheckpointError: No such file, or the file is truncated / not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a bad file
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) cannot be read: it is truncated or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def check_checkpoint(path: str | os.PathLike, task: str) -> None:
    """Fail unless `path` is a readable Lightning checkpoint of `task`.

    Raises:
        CheckpointError: Missing, unreadable, without a model state, or of another task.
    """
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
    other = checkpoint_task(checkpoint)
    if other is not None and other != task:
        raise CheckpointError(
            f"{path} is a checkpoint of task '{other}', not '{task}': "
            f"use it with `python -m tasks.{other}`, or give a {task} checkpoint"
        )


def resolve_last(task: str, roots: list[Path]) -> Path:
    """The newest `last.ckpt` under the given folders (a task's `runs/<task>/`, the trainer's root).

    Raises:
        CheckpointError: There is none.
    """
    found = [p for root in roots if root.is_dir() for p in root.rglob("last.ckpt") if p.is_file()]
    if not found:
        where = ", ".join(str(r) for r in roots)
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {where}; give the checkpoint's path instead")
    return max(found, key=lambda p: p.stat().st_mtime)
