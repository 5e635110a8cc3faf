"""The one LightningCLI subclass every task uses: `python -m tasks.X fit|validate|test|predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from tasks.common.checkpoints import CheckpointError, check_checkpoint, resolve_last


class LiteDenseCLI(LightningCLI):
    """LightningCLI with a `--backbone NAME` shortcut for `--model.backbone NAME`.

    The shortcut wins over a `--config` file, so `--config recipe.yaml --backbone ghostnet` runs the
    recipe on another backbone. Unknown names fail when the model is built, with the closest names.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add `--backbone`."""
        parser.add_argument(
            "--backbone",
            type=str | None,
            default=None,
            help="Backbone name (see `python -m backbones.table`); shortcut for --model.backbone.",
        )

    def _check_ckpt_path(self) -> None:
        """Resolve `--ckpt_path last` and refuse a missing, truncated or other-task checkpoint, in one line.

        Runs before Lightning reads the checkpoint's hyperparameters (which, for another task's file,
        would end in a usage dump) and before anything is built or trained (`tasks.common.checkpoints`).
        """
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path or subcommand == "export" or ckpt_path in ("best", "hpc", "registry"):
            return
        task = self._model_class.__module__.split(".")[1] if self._model_class.__module__.startswith("tasks.") else ""
        try:
            if ckpt_path == "last":
                root = Path(config.trainer.get("default_root_dir") or ".")
                roots = [root / "runs" / task, root / "lightning_logs", root / "checkpoints"]
                ckpt_path = str(resolve_last(task, roots))
                config.ckpt_path = ckpt_path
                print(f"--ckpt_path last: resuming from {ckpt_path}")
            check_checkpoint(ckpt_path, task)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}") from None

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint path first (`_check_ckpt_path`), then let Lightning read its hyperparameters."""
        self._check_ckpt_path()
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Copy `--backbone` into the model's arguments."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("backbone"):
            config.model.backbone = config.backbone


def run_cli(
    model_class: type[LightningModule],
    datamodule_class: type[LightningDataModule],
    trainer_defaults: dict[str, Any] | None = None,
    args: list[str] | None = None,
    *,
    task: str,
) -> LiteDenseCLI:
    """Run a task's command line.

    Every task logs to TensorBoard under `runs/<task>/version_N/` (checkpoints in its `checkpoints/`)
    unless the command line or a config names another logger. Callbacks come from the model's
    `configure_callbacks` (`tasks.common.module.TaskModule`), the same way in every task.

    Args:
        model_class: The task's LightningModule.
        datamodule_class: The task's LightningDataModule.
        trainer_defaults: The task's default schedule (max_epochs, log_every_n_steps); any of it can
            be overridden from the command line or a config.
        args: Arguments instead of sys.argv (tests).
        task: The task's name, e.g. "depth": the log folder.

    Returns:
        The CLI after it ran.
    """
    defaults = dict(trainer_defaults or {})
    defaults.setdefault("logger", lazy_instance(TensorBoardLogger, save_dir="runs", name=task))
    return LiteDenseCLI(
        model_class,
        datamodule_class,
        trainer_defaults=defaults,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
    )
