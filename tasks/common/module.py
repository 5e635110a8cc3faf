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
separate `last.ckpt` written at the end of every training epoch and every `save_every_n_steps` steps
(the latest state, for resuming; both written atomically, `tasks.common.checkpoints`), the
learning-rate monitor when there is a logger, and the task's prediction writer. Checkpoints record
the task and the global random states; with the data module's training position
(`tasks.common.sampling`) a run resumed with `fit --ckpt_path last` continues exactly.

Under DDP, `evaluation_samples` tells a task which evaluated samples are the distributed sampler's
padding (so metrics count every image once) and each sample's dataset index; `full_precision`
turns autocast off around losses and metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from torch import Tensor, nn

from backbones import get_backbone_entry
from tasks.common.checkpoints import BestCheckpoint, LastCheckpoint, restore_rng_state, rng_state
from tasks.common.data import LoaderBottleneckHint
from tasks.common.distributed import duplicate_positions, is_distributed, loader_indices
from tasks.common.optim import build_optimizer, build_schedule, check_options, warmup_steps

__all__ = ["LastCheckpoint", "TaskModule"]


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
        save_every_n_steps: Also rewrite `last.ckpt` every N optimizer steps (0: at epoch ends only),
            so a killed run resumes from its last step checkpoint, mid-epoch.
        compile: Run the backbone and head through `torch.compile` (inductor; on CPU it needs a C++
            compiler such as gcc). Same weights and checkpoints; measured speed-ups in docs/speed.md.
        channels_last: Keep weights and activations in channels-last (NHWC) memory format: the same
            computation, in a layout oneDNN's CPU convolutions run faster (training step 0.7-0.8x of NCHW's
            for the MobileNetV3-L tasks, docs/speed.md). None (default) takes the backbone's measured preference
            (`BackboneEntry.channels_last`: NCHW for the few nets that are slower in NHWC). Applied by
            `configure_model`; checkpoints are the same either way.
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
        save_every_n_steps: int = 0,
        compile: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        check_options(optimizer, schedule, warmup_epochs)
        if save_every_n_steps < 0:
            raise ValueError(f"save_every_n_steps must be >= 0, got {save_every_n_steps}")
        # Collects the arguments of the subclass's __init__ too, so checkpoints rebuild the same model.
        self.save_hyperparameters()
        self.head: nn.Module | None = None
        self._eval_order: dict[str, tuple[list[int] | None, set[int], int]] = {}
        self._pending_rng: dict | None = None
        self._eval_loss: dict[str, Tensor] = {}

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

    @property
    def uses_channels_last(self) -> bool:
        """Whether `configure_model` puts this model in channels-last memory format (see `channels_last`)."""
        choice = self.hparams.get("channels_last")
        if choice is not None:
            return bool(choice)
        name = self.hparams.get("backbone")
        return get_backbone_entry(name).channels_last if isinstance(name, str) else True

    def configure_model(self) -> None:
        """Set the memory format, then with `compile` compile the backbone and head in place.

        Lightning calls this after `setup` (so heads sized from the data are built) and before the
        optimizer and any checkpoint are loaded: `Module.to(memory_format=...)` keeps the parameter
        objects, so the optimizer and the state-dict keys are the same in either format.
        `nn.Module.compile` keeps the modules and their state-dict keys, so checkpoints written with and
        without it load into each other; the loss, metrics and decoding stay eager.
        """
        self.to(memory_format=torch.channels_last if self.uses_channels_last else torch.contiguous_format)
        if not self.hparams.get("compile"):
            return
        for network in (getattr(self, "backbone", None), self.head):
            if isinstance(network, nn.Module) and getattr(network, "_compiled_call_impl", None) is None:
                network.compile()

    # --- evaluation hooks: one name for each role ------------------------------------------------
    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss and metric updates of one validation or test batch."""
        raise NotImplementedError

    def evaluate_epoch(self, stage: str) -> None:
        """Compute, log and reset the metrics of a validation or test epoch."""
        raise NotImplementedError

    # --- exact metrics under DDP: which evaluated samples are the sampler's padding ----------------
    def _start_evaluation(self, stage: str) -> None:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        indices = loader_indices(loader) if loader is not None else None
        self._eval_order[stage] = (indices, duplicate_positions(indices), 0)

    def on_validation_epoch_start(self) -> None:
        """Find the validation samples this process shares with another (the sampler's padding)."""
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        """As `on_validation_epoch_start`, for the test split."""
        self._start_evaluation("test")

    def evaluation_samples(self, stage: str, count: int) -> tuple[Tensor, list[int]]:
        """Which of the next `count` evaluated samples to score, and their dataset indices.

        Under DDP Lightning's sampler pads the last shards with repeated images; those are masked out
        here so that every image is scored once and metrics equal one process's. Call once per batch.

        Returns:
            (count,) bool mask of the samples to score, and the dataset index of each sample.
        """
        indices, duplicates, position = self._eval_order.get(stage, (None, set(), 0))
        positions = range(position, position + count)
        self._eval_order[stage] = (indices, duplicates, position + count)
        keep = torch.tensor([p not in duplicates for p in positions], dtype=torch.bool, device=self.device)
        known = indices is not None and position + count <= len(indices)
        return keep, [indices[p] for p in positions] if known else list(positions)

    def log_result(self, name: str, value: Tensor | float, **kwargs: Any) -> None:
        """Log an epoch result that every process computed identically (from gathered / summed states).

        `sync_dist` with a max reduction returns that same number on every process, exactly (a mean
        of identical floats need not be), and keeps Lightning from warning about unsynchronised
        epoch metrics.
        """
        self.log(name, value, sync_dist=True, reduce_fx="max", **kwargs)

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Autocast off: losses and metrics run in float32 under `--trainer.precision bf16-mixed` / 16-mixed."""
        with torch.autocast(self.device.type, enabled=False):
            yield

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """See `evaluate_batch`."""
        self.evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """See `evaluate_batch`."""
        self.evaluate_batch(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        """See `evaluate_epoch`; then the epoch's loss (`add_eval_loss`)."""
        self.evaluate_epoch("val")
        self._log_eval_loss("val")

    def on_test_epoch_end(self) -> None:
        """See `evaluate_epoch`; then the epoch's loss (`add_eval_loss`)."""
        self.evaluate_epoch("test")
        self._log_eval_loss("test")

    def add_eval_loss(self, stage: str, loss: Tensor, count: int) -> None:
        """Add a batch's mean loss, weighing `count` (samples, or valid pixels), to the epoch's `<stage>/loss`.

        Summed by us (loss x count, count) and reduced once at the epoch end: Lightning's own
        `sync_dist` mean divides integer batch-size totals with truncation when the processes hold
        different numbers of samples, which the sampler's padding makes them do.
        """
        total = self._eval_loss.setdefault(stage, torch.zeros(2, dtype=torch.float64))
        total += torch.stack([loss.detach().double().cpu() * count, torch.tensor(float(count), dtype=torch.float64)])

    def _log_eval_loss(self, stage: str) -> None:
        total = self._eval_loss.pop(stage, torch.zeros(2, dtype=torch.float64)).to(self.device)
        if is_distributed():
            torch.distributed.all_reduce(total)
        if total[1] > 0:
            self.log_result(f"{stage}/loss", (total[0] / total[1]).float())

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

    # --- checkpoints: the task's name, and the random state for an exact resume --------------------
    @property
    def task_name(self) -> str:
        """The task this module belongs to ("depth", "segmentation", "detection")."""
        parts = type(self).__module__.split(".")
        return parts[1] if len(parts) > 2 and parts[0] == "tasks" else type(self).__name__

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task (so another task's CLI refuses the file) and the global random states."""
        checkpoint["litedense"] = {"task": self.task_name, "module": f"{type(self).__module__}.{type(self).__name__}"}
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved random states until training resumes (see `on_train_batch_start`)."""
        self._pending_rng = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """On the first batch after a resume, restore the random states the checkpoint saved.

        Restored here, after Lightning's sanity check and loader set-up, so the next step draws
        what the uninterrupted run drew (dropout).
        """
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

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
        best = BestCheckpoint(
            monitor=self.monitor,
            mode=self.monitor_mode,
            save_top_k=1,
            filename=f"best-epoch{{epoch:02d}}-{self.checkpoint_tag}{{{self.monitor}:.4f}}",
            auto_insert_metric_name=False,
        )
        callbacks: list[Callback] = [best, LastCheckpoint(self.hparams.get("save_every_n_steps", 0))]
        if self._trainer is not None and self.trainer.logger is not None:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        callbacks.append(self.prediction_writer())
        callbacks.append(LoaderBottleneckHint())  # one line when the step waits for the training loader
        return callbacks

    def deployable(self) -> nn.Module:
        """The network alone: normalized (N, 3, H, W) images -> the task's raw outputs (for export)."""
        raise NotImplementedError

    def network_loss(self, outputs: Any, batch: dict) -> Tensor:
        """The task's training loss of `deployable()`'s outputs on `batch`.

        What quantization-aware training of the exported network minimizes (`tasks.common.deploy.qat`);
        auxiliary heads, which are not exported, are left out.
        """
        raise NotImplementedError

    def inference_network(self, *, channels_last: bool = False) -> nn.Module:
        """`deployable()` in its inference form: a copy with batch norm folded into the convolutions.

        Same outputs to float rounding (`backbones.fuse_for_inference`); this module keeps training as
        before. `channels_last=True` is the fastest form on CPU (docs/speed.md); keep it False for export.
        """
        from backbones import fuse_for_inference  # here, so that importing a task stays light

        return fuse_for_inference(self.deployable(), channels_last=channels_last)
