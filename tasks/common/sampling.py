"""The training order and the augmentation randomness, as functions of the seed: reproducible and resumable.

- Order: `EpochSampler`, a `DistributedSampler` (also with one process) whose permutation depends only
  on the seed and the epoch. Lightning keeps a sampler that already is a `DistributedSampler`, calls
  its `set_epoch`, and under DDP each process takes its own shard of the same permutation.
- Augmentation: `SeededSamples` reseeds the dataset's albumentations pipeline before every sample
  from (seed, epoch, index). albumentations 2.x pipelines own their random generators (a `Compose`
  built without `seed` draws them from the OS), so `seed_everything` alone does not reach them;
  seeding per sample makes an augmented sample the same whatever the number of workers or
  processes, and whether or not the run was resumed in between.
- Resume: the data module stores how many batches of the current epoch were done
  (`resume_position`), and the next training loader skips exactly those samples of the same
  permutation (Lightning restores the loops, not a plain DataLoader's position).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def global_seed() -> int:
    """The seed `--seed_everything` set (Lightning keeps it in PL_GLOBAL_SEED), 0 when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for sample `index` of `epoch`, well mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


def seed_pipeline(transform: Any, seed: int) -> None:
    """Seed an augmentation pipeline that has albumentations' `set_random_seed` (nothing otherwise)."""
    setter = getattr(transform, "set_random_seed", None)
    if callable(setter):
        setter(seed)


class EpochSampler(DistributedSampler):
    """The shard of this process of a permutation drawn from (seed, epoch); yields (epoch, index) pairs.

    Args:
        dataset: The training split.
        num_replicas: Processes (1 without DDP).
        rank: This process's rank.
        seed: The run's seed.
        shuffle: Permute (training) or keep the order.
        epoch: The epoch of the first iteration (a resumed run's).
        skip: Samples of this shard to skip in the first iteration (a run resumed mid-epoch).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        skip: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch, self.skip = epoch, skip

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; a pending skip belongs to its own epoch only."""
        if epoch != self.epoch:
            self.skip = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in indices[skip:]])


class SeededSamples(Dataset):
    """A dataset whose pipeline is reseeded from (seed, epoch, index) before each sample.

    Indexed by `EpochSampler`'s (epoch, index) pairs, or by a plain index (epoch 0), e.g. when
    Lightning swaps in a sequential sampler for `overfit_batches`.

    Args:
        dataset: A split whose `transform` attribute is the augmentation pipeline.
        seed: The run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        seed_pipeline(getattr(self.dataset, "transform", None), sample_seed(self.seed, epoch, index))
        return self.dataset[index]


def loader_generator(seed: int | None = None) -> torch.Generator:
    """A generator of the loader's own: creating a loader iterator then draws nothing from the global RNG.

    (PyTorch draws the workers' base seed at every `iter(loader)`; from the global generator unless
    the loader has one, which would shift the model's random numbers, e.g. dropout, after a resume.)
    """
    return torch.Generator().manual_seed(global_seed() if seed is None else seed)


def training_order(
    dataset: Dataset, trainer: Any, resume: dict | None, batch_size: int
) -> tuple[Dataset, EpochSampler]:
    """The seeded dataset and sampler of a training loader.

    Args:
        dataset: The training split.
        trainer: The Lightning trainer (None outside one: one process, epoch 0).
        resume: `resume_position` of the checkpoint being resumed, or None.
        batch_size: Batch size per process.

    Returns:
        (SeededSamples, EpochSampler).
    """
    seed = global_seed()
    replicas = getattr(trainer, "world_size", 1) if trainer is not None else 1
    rank = getattr(trainer, "global_rank", 0) if trainer is not None else 0
    epoch, skip = 0, 0
    if resume:
        epoch, skip = int(resume["epoch"]), int(resume["batches"]) * batch_size
    sampler = EpochSampler(dataset, replicas, rank, seed=seed, shuffle=True, epoch=epoch, skip=skip)
    return SeededSamples(dataset, seed), sampler


def resume_position(trainer: Any) -> dict[str, int]:
    """Where training is in its epoch, for the checkpoint being written: {"epoch", "batches"}.

    During an epoch (a step checkpoint) "batches" is the number of batches of this epoch already
    trained; at the end of an epoch (after its last batch) it is the next epoch with 0 batches.
    """
    fit_loop = getattr(trainer, "fit_loop", None)
    if fit_loop is None:
        return {"epoch": 0, "batches": 0}
    epochs = fit_loop.epoch_progress.current
    if epochs.started > epochs.processed:  # inside an epoch: its batches so far
        return {"epoch": epochs.processed, "batches": fit_loop.epoch_loop.batch_progress.current.processed}
    return {"epoch": epochs.processed, "batches": 0}
