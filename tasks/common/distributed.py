"""What evaluation needs under several processes (DDP): gather, broadcast, and the sampler's padding.

Lightning gives each process a `DistributedSampler` shard of the evaluation split. When the split does
not divide evenly, the sampler pads the last shards with images from the start of the split, so those
images are seen twice. Metrics that simply sum over processes (torchmetrics' own sync) count them
twice. `duplicate_positions` finds them before the epoch (from the shards' index lists, no image is
read), so the tasks leave them out of their metric updates; detection, which gathers its detections,
drops them by image id.

Every helper is a no-op in a single process (no process group), so the same code runs everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """The rank of this process (0 without a group)."""
    return dist.get_rank() if is_distributed() else 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in rank order; `[obj]` in a single process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src`, on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def loader_indices(loader: Any) -> list[int] | None:
    """The dataset indices a map-style loader yields on this process, in order (None if unknown).

    Reads the batch sampler (Lightning's `DistributedSampler` shard under DDP); iterating an
    evaluation sampler draws no random numbers and loads nothing.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is None:
        return None
    indices: list[int] = []
    for batch in batch_sampler:
        indices.extend(int(i) for i in batch)
    return indices


def duplicate_positions(local_indices: Iterable[int] | None) -> set[int]:
    """Positions of this process's samples that another process (or an earlier position) also holds.

    The first occurrence of each dataset index, in the order (position, rank) — the order of the
    padded index list a `DistributedSampler` splits — is kept; every later one is a duplicate. All
    processes must call this together (it gathers the index lists).

    Args:
        local_indices: The dataset indices this process will evaluate, in order (`loader_indices`).

    Returns:
        The positions (0-based, in this process's evaluation order) to leave out of the metrics.
    """
    local = list(local_indices) if local_indices is not None else None
    shards = all_gather_object(local)
    if any(shard is None for shard in shards):
        return set()  # an unknown order on some process: nothing can be matched (no padding assumed)
    me = rank()
    seen: set[int] = set()
    duplicates: set[int] = set()
    for position in range(max(len(s) for s in shards)):
        for r, shard in enumerate(shards):
            if position >= len(shard):
                continue
            index = shard[position]
            if index in seen and r == me:
                duplicates.add(position)
            seen.add(index)
    return duplicates
