"""Fine-tuning from ImageNet weights, ours and a peer trained identically, with training time per epoch.

    python benchmarks/finetune_peers.py MODEL TASK fit --config CONFIG --model.pretrained WEIGHTS [...]

MODEL is "litedense" (our task module, exactly what `python -m tasks.TASK` trains) or, for TASK
"segmentation", a segmentation-models-pytorch (smp) peer: "smp-deeplabv3plus" or "smp-deeplabv3" with
smp's `mobilenet_v2` encoder. Everything after TASK is the task's own command line (LightningCLI:
`--config`, every `--model.*` / `--data.*` / `--trainer.*` flag), so ours and the peer read the same
recipe file.

The peer is fair by construction: `SmpSegmentationModule` subclasses our `SegmentationModule` and
swaps only the network (encoder + decoder + segmentation head). The data module, augmentation,
resolution, loss, optimizer and schedule (one factory, `tasks.common.optim`), epochs, metrics and
checkpointing are ours, unchanged. smp's mobilenet_v2 encoder is torchvision's `MobileNetV2`, so the
torchvision ImageNet file loads into it directly (minus the classifier, which smp deletes); every key
must match (`load_smp_encoder_weights` checks this and prints the count). The smp decoders keep their
defaults (DeepLabV3Plus: output stride 16, separable ASPP rates 12/24/36, dropout 0.5, 256 channels);
the recipe's `model.head` / `model.head_kwargs` are ours and ignored by the peer, and
`model.output_stride` is passed to smp as `encoder_output_stride`.

Every run prints and writes (atomically, to the run's log folder as `finetune_summary.json`) the
training time of each epoch (train loop only, validation excluded; first epoch included), their
median, and the best monitored metric. `--test-best` (before MODEL) also runs `test` with the best
checkpoint (the BCCD figure is the test split's).

Where the architectures differ (segmentation, DeepLabV3+ on MobileNetV2 at output stride 16):
- smp's encoder returns torchvision's `features[18]`, the 1280-channel 1x1 conv, as its deepest map,
  so its ASPP reads 1280 channels; ours reads the 320-channel stage output (the DeepLab papers' choice);
- smp's separable convs have no BN / ReLU between the depthwise and pointwise convs (ours have), smp adds
  one separable conv after ASPP and has one in the decoder (ours: none after ASPP, two in the decoder);
- smp upsamples with align_corners=True (ours: False).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

# Run as a script from the repository root: make the project's packages importable without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads._layers import resize_to  # noqa: E402
from tasks.common.cli import run_cli  # noqa: E402
from tasks.common.files import write_json_atomic  # noqa: E402
from tasks.segmentation.metrics import SegmentationMetrics  # noqa: E402
from tasks.segmentation.module import SegmentationModule  # noqa: E402

SMP_ARCHITECTURES = {"smp-deeplabv3plus": "DeepLabV3Plus", "smp-deeplabv3": "DeepLabV3"}


def load_smp_encoder_weights(encoder: nn.Module, path: str) -> int:
    """Load a torchvision MobileNetV2 checkpoint into smp's `mobilenet_v2` encoder, every key matching.

    Args:
        encoder: smp's MobileNetV2Encoder (a torchvision `MobileNetV2` without its classifier).
        path: The torchvision file (e.g. `mobilenet_v2-b0353104.pth`), read without unpickling objects.

    Returns:
        Number of tensors loaded.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file's keys (classifier aside) are not exactly the encoder's.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    # weights_only: tensors and plain containers only, a pickled object is refused, never run.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in raw.items() if not k.startswith("classifier.")}
    # nn.Module's own load_state_dict: smp's override returns nothing, this one reports the key sets.
    result = nn.Module.load_state_dict(encoder, state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: not smp's mobilenet_v2 encoder layout (torchvision's); "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return len(state)


class SmpHead(nn.Module):
    """smp's decoder + segmentation head behind our head interface: `head(features, output_size)`.

    Args:
        decoder: The smp model's decoder (reads the encoder's list of maps).
        segmentation_head: The smp model's final conv + upsampling.
    """

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module) -> None:
        super().__init__()
        self.decoder, self.segmentation_head = decoder, segmentation_head

    def forward(self, features: list[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        """smp encoder maps [x, s2, s4, s8, s16, s16] -> (N, K, H, W) logits (at `output_size` if given)."""
        logits = self.segmentation_head(self.decoder(features))  # smp upsamples to the input stride
        return resize_to(logits, output_size)  # a no-op for sizes divisible by the output stride


class SmpSegmentationModule(SegmentationModule):
    """Our segmentation task with the network replaced by an smp model on smp's `mobilenet_v2` encoder.

    Args:
        smp_architecture: smp model class name ("DeepLabV3Plus" or "DeepLabV3"), built with its defaults.
        pretrained: False, or a torchvision MobileNetV2 file loaded into smp's encoder.
        output_stride: smp's `encoder_output_stride` (8 or 16).
        **kwargs: Everything else of `SegmentationModule` (the loss, optimizer, schedule and metrics
            options apply; `backbone`, `head`, `head_kwargs` describe ours and are not used).
    """

    def __init__(
        self,
        smp_architecture: str = "DeepLabV3Plus",
        pretrained: bool | str = False,
        output_stride: int = 16,
        **kwargs: Any,
    ) -> None:
        if pretrained is True:
            raise ValueError("the smp peer loads a local torchvision MobileNetV2 file: pass model.pretrained=PATH")
        # Our own backbone is built (random, cheap) by the parent and replaced below.
        super().__init__(pretrained=False, output_stride=output_stride, **kwargs)
        self.hparams.pretrained = pretrained  # recorded as given (the parent saw False)
        self.backbone = smp.encoders.get_encoder(
            "mobilenet_v2", in_channels=3, depth=5, weights=None, output_stride=output_stride
        )
        if pretrained:
            count = load_smp_encoder_weights(self.backbone, pretrained)
            print(f"smp mobilenet_v2 encoder: all {count} tensors of {pretrained} loaded (classifier left out)")

    def build_head(self, num_classes: int) -> None:
        """smp's decoder and segmentation head for `num_classes` (its own encoder copy is dropped), metrics."""
        hp = self.hparams
        model = getattr(smp, hp.smp_architecture)(
            encoder_name="mobilenet_v2",
            encoder_weights=None,
            encoder_output_stride=hp.output_stride,
            classes=num_classes,
        )
        if hp.aux_loss_weight > 0:
            raise ValueError("the smp peer has no auxiliary head: set model.aux_loss_weight to 0")
        self.metrics = nn.ModuleDict(
            {stage: SegmentationMetrics(num_classes, hp.ignore_index) for stage in ("val", "test")}
        )
        self.head = SmpHead(model.decoder, model.segmentation_head)


class EpochTimer(Callback):
    """Training-loop wall time of every epoch, validation excluded, for the run's summary."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._val_start = 0.0
        self._val_time = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock."""
        self._start, self._val_time = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validation inside a training epoch is not training time: time it to subtract."""
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """See `on_validation_epoch_start`."""
        self._val_time += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the clock (Lightning calls this after the epoch's end-of-epoch validation)."""
        self.times.append(time.perf_counter() - self._start - self._val_time)
        print(f"epoch {trainer.current_epoch}: train {self.times[-1]:.1f} s", flush=True)


def best_checkpoint(trainer: Trainer, monitor: str) -> ModelCheckpoint | None:
    """The fit's checkpoint callback that follows `monitor` (not `last.ckpt`'s, whatever their order)."""
    return next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == monitor), None)


def summary(model_name: str, task: str, best: ModelCheckpoint | None, timer: EpochTimer) -> dict:
    """The figures of one fit: best monitored metric and its checkpoint, per-epoch training times."""
    score = best.best_model_score if best is not None else None
    return {
        "model": model_name,
        "task": task,
        "monitor": best.monitor if best is not None else None,
        "best_score": float(score) if score is not None else None,
        "best_checkpoint": best.best_model_path if best is not None else None,
        "epoch_train_s": [round(t, 2) for t in timer.times],
        "median_epoch_train_s": round(statistics.median(timer.times), 2) if timer.times else None,
        "threads": torch.get_num_threads(),
        "test": None,
    }


def task_classes(task: str) -> tuple[type, type, dict]:
    """The task's module class, data module class and default trainer settings."""
    if task == "segmentation":
        from tasks.segmentation import cli
        from tasks.segmentation.datamodule import SegmentationDataModule as Data
    elif task == "detection":
        from tasks.detection import cli
        from tasks.detection.datamodule import DetectionDataModule as Data
    elif task == "depth":
        from tasks.depth import cli
        from tasks.depth.datamodule import DepthDataModule as Data
    else:
        raise ValueError(f"unknown task '{task}'; choose segmentation, detection or depth")
    module = {"segmentation": "SegmentationModule", "detection": "DetectionModule", "depth": "DepthModule"}[task]
    return getattr(cli, module), Data, dict(cli.TRAINER_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    """Parse MODEL TASK, run the task's command line with the chosen network, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--test-best", action="store_true", help="after fit, test the best checkpoint")
    parser.add_argument("model", choices=["litedense", *SMP_ARCHITECTURES])
    parser.add_argument("task", choices=["segmentation", "detection", "depth"])
    args, cli_args = parser.parse_known_args(argv)
    module_class, data_class, defaults = task_classes(args.task)
    if args.model != "litedense":
        if args.task != "segmentation":
            parser.error(f"{args.model} is a segmentation peer")
        module_class = SmpSegmentationModule
        cli_args = [*cli_args, "--model.smp_architecture", SMP_ARCHITECTURES[args.model]]
    timer = EpochTimer()
    defaults["callbacks"] = [timer]
    run_name = f"finetune_{args.task}_{args.model}"
    cli = run_cli(module_class, data_class, defaults, cli_args, task=run_name)
    trainer = cli.trainer
    # Read before `test`: Lightning re-attaches the model's callbacks there, fresh ones replacing these.
    best = best_checkpoint(trainer, module_class.monitor)
    result = summary(args.model, args.task, best, timer)
    if args.test_best and cli.subcommand == "fit":
        if best is None or not best.best_model_path:
            raise RuntimeError(f"no best checkpoint by {module_class.monitor} to test (did validation run?)")
        result["test"] = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best.best_model_path)[0]
    print("summary:", result, flush=True)
    if trainer.log_dir:
        write_json_atomic(Path(trainer.log_dir) / "finetune_summary.json", result)
    return result


if __name__ == "__main__":
    main()
