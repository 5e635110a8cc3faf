"""The one LightningCLI subclass every task uses: `python -m tasks.X fit|validate|test|predict|export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, lazy_instance
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
            help="Backbone name (see `python -m tools.backbone_table`); shortcut for --model.backbone.",
        )
        parser.add_argument(
            "--onnx",
            type=str | None,
            default=None,
            help="validate / test / predict an exported .onnx file (fp32 or int8) through onnxruntime instead of "
            "the PyTorch model (docs/deploy.md); its model settings come from the file.",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and `export` (`tasks.common.deploy.onnx_export.DeployTrainer.export`)."""
        # int8 and raw are added as flags below (a bare `--int8`), not as `--int8 true` method arguments.
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule", "int8", "raw"}}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's, plus export's `--int8` / `--raw` flags."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "export":
            for flag, text in (
                ("int8", "quantize to int8 (static QDQ), calibrated on --calibration_batches training batches"),
                ("raw", "export the raw head outputs (detection: offsets, logits, default boxes; no NMS)"),
            ):
                parser.add_argument(f"--{flag}", action=ActionYesNo, default=False, help=text)
                self._subcommand_method_arguments[subcommand].append(flag)
        return parser

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
                logger = config.trainer.get("logger")  # a logger given on the command line / in a config
                save_dir = logger.get("init_args", {}).get("save_dir") if hasattr(logger, "get") else None
                if save_dir:
                    roots.insert(0, Path(save_dir))
                ckpt_path = str(resolve_last(task, roots))
                config.ckpt_path = ckpt_path
                print(f"--ckpt_path last: resuming from {ckpt_path}")
            check_checkpoint(ckpt_path, task)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}") from None

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint path first (`_check_ckpt_path`), then let Lightning read its hyperparameters."""
        self._check_ckpt_path()
        ckpt_path = self.config.get(self.config.get("subcommand") or "", {}).get("ckpt_path")
        if self.config.get("subcommand") == "export" and ckpt_path:  # export: the file must exist and be this task's
            try:
                check_checkpoint(ckpt_path, self._model_class.__module__.split(".")[1])
            except CheckpointError as err:
                raise SystemExit(f"error: {err}") from None
        super()._parse_ckpt_path()

    def after_instantiate_classes(self) -> None:
        """With `--onnx`, replace the model by the task's evaluator of the exported file."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.get("onnx"):
            return
        if self.subcommand not in ("validate", "test", "predict"):
            raise ValueError(f"--onnx runs validate, test or predict on an exported file, not {self.subcommand}")
        if config.get("ckpt_path"):
            raise ValueError("give --onnx or --ckpt_path, not both: the exported file holds its weights")
        from tasks.common.deploy.onnx_export import task_of
        from tasks.common.deploy.runtime import load_onnx_module

        self.model = load_onnx_module(config.onnx, task_of(self._model_class))

    def before_instantiate_classes(self) -> None:
        """Copy `--backbone` into the model's arguments."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("backbone"):
            config.model.backbone = config.backbone
        if config.get("onnx") and config.get("model") is not None and config.model.get("pretrained"):
            config.model.pretrained = False  # --onnx: the file holds the weights; the configured model is replaced


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
    from tasks.common.deploy.onnx_export import DeployTrainer  # Trainer + the `export` subcommand

    return LiteDenseCLI(
        model_class,
        datamodule_class,
        trainer_class=DeployTrainer,
        trainer_defaults=defaults,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
    )
