"""The one LightningCLI subclass every task uses: `python -m tasks.X fit|validate|test|predict`."""

from __future__ import annotations

from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger


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
