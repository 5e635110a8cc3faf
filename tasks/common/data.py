"""What the three data modules share: image suffixes, normalization, the predict folder, loaders, the base.

Every task's data module subclasses `TaskDataModule`, which owns the options all tasks have (batch sizes,
workers, the predict folder and where predictions go) and the split logic: `setup(stage)` builds the
splits the stage needs through the task's `build_split(split)`, and `predict` reads `predict_dir` (any
folder of images, through the task's `predict_transform`) or, without one, the test split.

Batches are dicts: "image" (N, 3, H, W) normalized and "name" (N file stems or synthetic ids, the names
predictions are written under), plus the task's own keys.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tasks.common.images import CorruptImageError, read_rgb
from tasks.common.sampling import loader_generator, resume_position, training_order

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# ImageNet statistics, which every pretrained backbone here expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test", "predict")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def normalize(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalized with the ImageNet mean and std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def denormalize(images: Tensor) -> Tensor:
    """Undo `normalize` for display: (N, 3, H, W) or (3, H, W) -> the same shape in [0, 1]."""
    shape = (3, 1, 1) if images.ndim == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(shape)
    return (images * std + mean).clamp(0, 1)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by `IMAGE_SUFFIXES`) of a folder, sorted by name.

    Raises:
        FileNotFoundError: No such folder, or no image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


class PredictFolder(Dataset):
    """The images of a folder, for `predict`, each passed through the task's transform.

    Args:
        folder: Folder of images (sorted by name; other files are ignored).
        transform: Callable(image=(H, W, 3) uint8) -> dict with "image", the task's evaluation
            transform; each item adds "name" (the file stem), "path" and "size" ((H, W) of the file
            as displayed: EXIF orientation applied).
        skip_corrupt: An undecodable file gives None (dropped by the task's collate) and a warning
            naming it, instead of an error that stops `predict` with nothing written for the rest.
    """

    def __init__(self, folder: str | os.PathLike, transform: Callable[..., dict], skip_corrupt: bool = False) -> None:
        self.paths = list_images(folder)
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        path = self.paths[index]
        try:
            image = read_rgb(path)
        except CorruptImageError as err:
            if not self.skip_corrupt:
                raise
            warnings.warn(f"skipping corrupt image {path} (skip_corrupt=True): {err}", stacklevel=2)
            return None
        return {
            "image": self.transform(image=image)["image"],
            "name": path.stem,
            "path": str(path),
            "size": image.shape[:2],
        }


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    collate_fn: Callable[[list], Any] | None = None,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """The DataLoader of every task.

    Training shuffles and drops an incomplete last batch when there is more than one batch (a last
    batch of one image gives batch norm a single sample), saying so in one line; evaluation keeps the
    order and every image.

    Args:
        dataset: The split.
        batch_size: Images per batch.
        train: Shuffle and drop the incomplete last batch.
        num_workers: Worker processes (kept alive between epochs).
        collate_fn: Batch builder; None for PyTorch's default.
        sampler: The order (training: `tasks.common.sampling.EpochSampler`); None for shuffle / in order.
        generator: The loader's own generator (the workers' base seeds), so iterating draws nothing
            from the global RNG.
    """
    drop_last = train and len(dataset) > batch_size
    if drop_last and len(dataset) % batch_size:
        rank_zero_info(
            f"training uses {len(dataset) - len(dataset) % batch_size} of the {len(dataset)} images an epoch: the "
            f"last incomplete batch ({len(dataset) % batch_size} image(s), different ones each epoch) is dropped"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        # Page-locked batches copy to the GPU asynchronously; pointless (and a warning) without one.
        pin_memory=torch.cuda.is_available(),
    )


class LoaderBottleneckHint(Callback):
    """Says, once, when the training loader is slower than the training step (the step waits for data).

    Over training batches `skip` to `skip + window` of the first epoch it sums the time between one
    batch's end and the next batch's start (waiting for the loader) and the time inside each batch
    (forward, backward, optimizer step). When the wait is more than half the step time, the loader
    delivers less than twice what the step consumes (the margin docs/speed.md aims for), and it prints a
    hint naming the figures and `--data.num_workers`.

    Args:
        skip: Batches left out first (worker start-up, allocator warm-up, compilation).
        window: Batches measured.
    """

    def __init__(self, skip: int = 3, window: int = 20) -> None:
        self.skip, self.window = skip, window
        self.wait = self.step = 0.0
        self.seen = 0
        self._mark: float | None = None
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """Time since the previous batch ended: the data wait."""
        now = time.perf_counter()
        if not self.done and self._mark is not None and batch_idx >= self.skip:
            self.wait += now - self._mark
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Time inside the batch: the step; report after `window` measured batches."""
        now = time.perf_counter()
        self._mark = now
        if self.done or batch_idx < self.skip:
            return
        self.step += now - self._start
        self.seen += 1
        if self.seen >= self.window:
            self.done = True
            self.report(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """A short first epoch: report on what was measured."""
        if not self.done and self.seen >= 3:
            self.report(trainer)
        self.done, self._mark = True, None

    def report(self, trainer) -> None:
        """Print the hint when the wait exceeds half the step time."""
        if self.step <= 0 or self.wait <= 0.5 * self.step:
            return
        loader = trainer.train_dataloader
        workers = getattr(loader, "num_workers", "?")
        rank_zero_info(
            f"the training loader is the bottleneck: the step waited {1000 * self.wait / self.seen:.0f} ms per batch "
            f"for data against {1000 * self.step / self.seen:.0f} ms of computation, over {self.seen} batches; "
            f"raise --data.num_workers (now {workers}) if CPU cores are free, or lighten the augmentations"
        )


class TaskDataModule(LightningDataModule):
    """The shared shape of the task data modules.

    Subclasses set `DATASETS` (the names `dataset` accepts, "synthetic" first) and implement
    `build_split(split)` ("train", "val" or "test"), `predict_transform()` and, where batches need
    more than PyTorch's default collation, `collate`. All disk access happens in `setup`.

    Args:
        dataset: One of the task's `DATASETS`; "synthetic" needs no files.
        root: Dataset folder (every dataset but "synthetic").
        synthetic_train_size: Samples of the synthetic training split.
        synthetic_val_size: Samples of each synthetic evaluation split (validation, test).
        batch_size: Training batch size.
        eval_batch_size: Validation / test / predict batch size; None for `batch_size`.
        num_workers: DataLoader worker processes.
        predict_dir: Folder of images for `predict`; None predicts the test split.
        predict_output_dir: Where `predict` writes; None for `<log dir>/predictions` (the run's
            `runs/<task>/version_N/predictions/`, or `<default_root_dir>/predictions` without a logger).
    """

    DATASETS: ClassVar[tuple[str, ...]] = ("synthetic",)
    collate: ClassVar[Callable[[list], Any] | None] = None
    # The fewest images a training batch may hold: 2 where the network batch-normalises a 1x1 map
    # (SSDLite's last extra layers), which fails for a single image ("Expected more than 1 value per channel").
    MIN_TRAIN_BATCH: ClassVar[int] = 1
    MIN_TRAIN_BATCH_WHY: ClassVar[str] = ""

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        synthetic_train_size: int = 64,
        synthetic_val_size: int = 16,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        predict_dir: str | None = None,
        predict_output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if dataset not in self.DATASETS:
            raise ValueError(f"unknown {self.task} dataset '{dataset}'; choose one of {', '.join(self.DATASETS)}")
        if dataset != "synthetic" and root is None:
            raise ValueError(f"{self.task} dataset '{dataset}' needs --data.root (the folder that holds it)")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}
        self._resume: dict | None = None  # a checkpoint's training position, until the next training loader

    @property
    def task(self) -> str:
        """The task's name for messages ("depth", "segmentation", "detection")."""
        return type(self).__name__.removesuffix("DataModule").lower()

    def build_split(self, split: str) -> Dataset:
        """The dataset of "train", "val" or "test" (augmented for "train")."""
        raise NotImplementedError

    def synthetic_length(self, split: str) -> int:
        """Samples of a synthetic split: `synthetic_train_size` for "train", else `synthetic_val_size`."""
        return self.hparams.synthetic_train_size if split == "train" else self.hparams.synthetic_val_size

    def predict_transform(self) -> Callable[..., dict]:
        """Callable(image=(H, W, 3) uint8) -> {"image": (3, h, w), ...}, for the images of `predict_dir`."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Build the splits the stage needs (all disk access happens here)."""
        for split in STAGE_SPLITS[stage]:
            if split in self.datasets:
                continue
            if split == "predict":
                folder = self.hparams.predict_dir
                skip = bool(self.hparams.get("skip_corrupt", False))  # the tasks that have the option
                self.datasets[split] = (
                    PredictFolder(folder, self.predict_transform(), skip) if folder else self.build_split("test")
                )
            else:
                self.datasets[split] = self.build_split(split)

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        train = split == "train"
        dataset, sampler = self.datasets[split], None
        if train:  # seeded order and augmentation, resumable mid-epoch (tasks.common.sampling)
            dataset, sampler = training_order(dataset, self.trainer, self._resume, hp.batch_size)
            self._resume = None
        return make_loader(
            dataset,
            hp.batch_size if train else hp.eval_batch_size or hp.batch_size,
            train=train,
            num_workers=hp.num_workers,
            collate_fn=type(self).collate,
            sampler=sampler,
            generator=loader_generator(),
        )

    def state_dict(self) -> dict[str, Any]:
        """Where training is in its epoch (saved in checkpoints, so a resumed run continues the order)."""
        return {"resume_position": resume_position(self.trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember the position; the next training loader skips the batches already trained."""
        self._resume = state_dict.get("resume_position")

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches.

        Raises:
            ValueError: A training batch would hold fewer than `MIN_TRAIN_BATCH` images (batch_size, or
                a training split smaller than that).
        """
        size = min(self.hparams.batch_size, len(self.datasets["train"]))
        if size < self.MIN_TRAIN_BATCH:
            raise ValueError(
                f"{self.task} training needs at least {self.MIN_TRAIN_BATCH} images per batch "
                f"({self.MIN_TRAIN_BATCH_WHY}), but --data.batch_size is {self.hparams.batch_size} and the "
                f"training split has {len(self.datasets['train'])} image(s); use at least "
                f"{self.MIN_TRAIN_BATCH} of each"
            )
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The images of `predict_dir`, or the test split, in order."""
        return self._loader("predict")


def stack_batch(samples: Sequence[dict], keys: Sequence[str]) -> dict:
    """Stack the tensors under `keys` and list every other value, for a dict batch."""
    batch: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if key in keys else values
    return batch
