"""The base LightningModule of the three tasks: optimizer and schedule, classes, image logs, callbacks.

A task module subclasses `TaskModule`, sets `monitor` / `monitor_mode` (the metric its best checkpoint
follows) and `checkpoint_tag` (that metric in the best checkpoint's file name), and implements:

- `training_step(batch, batch_idx)`;
- `evaluate_batch(batch, batch_idx, stage)` and `evaluate_epoch(stage)` (stage "val" or "test"), which
  the base calls from the validation / test step and epoch-end hooks;
- `predict_step(batch, batch_idx)` returning one dict per image, with its "name", for the task's
  `prediction_writer()`;
- `deployable()`, the plain `nn.Module` from normalized images to the task's raw outputs (what export
  and benchmarks run);
- with `sized_by_data = True` (segmentation, detection): `build_head(num_classes)`; the head is then
  built at `setup` from the data module's `num_classes` unless `num_classes` was given.

Every task gets the same callbacks from `configure_callbacks`: the best checkpoint by `monitor`, a
separate `last.ckpt` written at the end of every training epoch (the latest state, for resuming), the
learning-rate monitor when there is a logger, and the task's prediction writer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from torch import Tensor, nn

from tasks.common.optim import build_optimizer, build_schedule, check_options, warmup_steps


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt`, rewritten at the end of every training epoch whatever the metrics did.

    Lightning's `save_last` writes only when the monitored checkpoint is written (so only on
    validation epochs); this one follows training, so a resumed run loses at most one epoch.
    """

    def __init__(self) -> None:
        super().__init__(filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True)
        self._enable_version_counter = False  # overwrite last.ckpt rather than write last-v1.ckpt


class TaskModule(LightningModule):
    """What every task module shares.

    Args:
        optimizer: "adamw", "sgd" (momentum) or "rmsprop" (TF's SSDLite settings).
        lr: Peak learning rate.
        weight_decay: Weight decay of convolution and linear weights (never of norms and biases).
        momentum: SGD / RMSProp momentum.
        schedule: "one_cycle", "cosine", "poly" or "constant", stepped every batch.
        warmup_epochs: Linear warm-up before "cosine", "poly" or "constant" (fractions allowed).
        poly_power: Exponent of the poly schedule.
        log_images: Samples of the first validation / test batch drawn to the logger (0 = none).
    """

    monitor: ClassVar[str]
    monitor_mode: ClassVar[str]
    checkpoint_tag: ClassVar[str]
    sized_by_data: ClassVar[bool] = False

    def __init__(
        self,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        schedule: str = "poly",
        warmup_epochs: float = 0.0,
        poly_power: float = 0.9,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        check_options(optimizer, schedule, warmup_epochs)
        # Collects the arguments of the subclass's __init__ too, so checkpoints rebuild the same model.
        self.save_hyperparameters()
        self.head: nn.Module | None = None

    # --- the data module's classes -------------------------------------------------------------
    @property
    def datamodule(self) -> LightningDataModule | None:
        """The trainer's data module (None outside a trainer)."""
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    @property
    def class_names(self) -> list[str]:
        """The data module's class names, or the class numbers of a model used on its own."""
        names = getattr(self.datamodule, "class_names", None)
        return list(names) if names else [str(i) for i in range(self.hparams.get("num_classes") or 0)]

    def build_head(self, num_classes: int) -> None:
        """Build the class-dependent parts (segmentation and detection heads)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Size the head from the data module's `num_classes`, or check that the two agree."""
        if not self.sized_by_data:
            return
        data_classes = getattr(self.datamodule, "num_classes", None)
        if self.head is None:
            if data_classes is None:
                raise ValueError(
                    f"{type(self).__name__}: model.num_classes is not set and the data module does not provide it"
                )
            self.build_head(data_classes)
            self.hparams.num_classes = data_classes  # saved in checkpoints, so loading rebuilds this head
        elif data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the model predicts {self.hparams.num_classes} classes but the data has {data_classes}; "
                f"leave model.num_classes unset to take the data's"
            )

    # --- evaluation hooks: one name for each role ------------------------------------------------
    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss and metric updates of one validation or test batch."""
        raise NotImplementedError

    def evaluate_epoch(self, stage: str) -> None:
        """Compute, log and reset the metrics of a validation or test epoch."""
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """See `evaluate_batch`."""
        self.evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """See `evaluate_batch`."""
        self.evaluate_batch(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        """See `evaluate_epoch`."""
        self.evaluate_epoch("val")

    def on_test_epoch_end(self) -> None:
        """See `evaluate_epoch`."""
        self.evaluate_epoch("test")

    @property
    def reporting(self) -> bool:
        """Whether an epoch's results are worth printing: not during Lightning's sanity check."""
        return self._trainer is not None and not self.trainer.sanity_checking

    # --- image logs -----------------------------------------------------------------------------
    def should_log_images(self, batch_idx: int) -> bool:
        """True for the first batch of a real (not sanity-check) evaluation with an image logger."""
        if batch_idx != 0 or not self.hparams.log_images or not self.reporting:
            return False
        return any(hasattr(getattr(logger, "experiment", None), "add_image") for logger in self.loggers)

    def log_image(self, tag: str, image: Tensor) -> None:
        """Send a (3, H, W) image (float in [0, 1] or uint8) to every logger that takes images."""
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(tag, image.detach().cpu(), self.global_step)

    # --- training setup -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """The shared factory (`tasks.common.optim`) with this model's options, stepped every batch."""
        hp = self.hparams
        optimizer = build_optimizer(self, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, getattr(self.trainer, "max_epochs", None) or 1)
        warmup = warmup_steps(hp.warmup_epochs, total, epochs)
        scheduler = build_schedule(optimizer, hp.schedule, total, warmup, hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def prediction_writer(self) -> Callback:
        """The callback that writes `predict` outputs (see `tasks.common.writer`)."""
        raise NotImplementedError

    def configure_callbacks(self) -> list[Callback]:
        """Best checkpoint by `monitor`, `last.ckpt` every epoch, learning rate, the prediction writer.

        Lightning lets these replace callbacks of the same type given to the Trainer (a config's).
        """
        best = ModelCheckpoint(
            monitor=self.monitor,
            mode=self.monitor_mode,
            save_top_k=1,
            filename=f"best-epoch{{epoch:02d}}-{self.checkpoint_tag}{{{self.monitor}:.4f}}",
            auto_insert_metric_name=False,
        )
        callbacks: list[Callback] = [best, LastCheckpoint()]
        if self._trainer is not None and self.trainer.logger is not None:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        callbacks.append(self.prediction_writer())
        return callbacks

    def deployable(self) -> nn.Module:
        """The network alone: normalized (N, 3, H, W) images -> the task's raw outputs (for export)."""
        raise NotImplementedError
