"""What every detection dataset shares: records, box sanitising, reading, COCO-format ground truth."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.common.images import CorruptImageError, read_rgb


@dataclass
class Record:
    """One annotated image.

    Attributes:
        image_id: Id used in COCO-format ground truth and results.
        path: Image file, or None for in-memory images (synthetic).
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: (G, 4) float32 x1y1x2y2 in pixels of the training targets.
        labels: (G,) int64 contiguous labels in 1..C-1.
        difficult: (G,) bool, VOC's difficult flag (ignored by evaluation, left out of training).
    """

    image_id: int
    path: str | None
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


# Why a box was changed or dropped while loading, in the order the warning lists them.
FIX_KINDS = {
    "clipped": "clipped to the image (they extended outside it)",
    "inverted": "dropped as inverted (xmax < xmin or ymax < ymin)",
    "zero_area": "dropped for zero area (xmax == xmin or ymax == ymin)",
    "outside": "dropped as lying wholly outside the image",
}


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Clip boxes to the image and find the ones that cannot be trained on.

    Args:
        boxes: (G, 4) x1y1x2y2 in pixels, as stored.
        width: Image width.
        height: Image height.

    Returns:
        The clipped boxes, a (G,) keep mask and the number of boxes of each `FIX_KINDS` kind: kept but
        clipped; dropped because inverted (a corner swap is a guess, so they are not repaired), of
        zero area as stored, or of zero area only after clipping (outside the image).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    zero_area = ~inverted & ((boxes[:, 2] == boxes[:, 0]) | (boxes[:, 3] == boxes[:, 1]))
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & ~inverted
    outside = ~keep & ~inverted & ~zero_area
    changed = np.any(clipped != boxes, axis=1) & keep
    counts = {"clipped": changed, "inverted": inverted, "zero_area": zero_area, "outside": outside}
    return clipped, keep, {kind: int(mask.sum()) for kind, mask in counts.items()}


class BoxFixes:
    """Counts of the boxes changed while loading, per annotation file, reported in one warning.

    Args:
        source: The dataset's list or annotation file, named first in the warning.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.files: dict[str, dict[str, int]] = {kind: {} for kind in FIX_KINDS}

    def add(self, where: str, counts: dict[str, int]) -> None:
        """Record `sanitize_boxes`' counts for one annotation file (or one image of a JSON)."""
        for kind, count in counts.items():
            if count:
                self.files[kind][where] = self.files[kind].get(where, 0) + count

    def message(self, listed: int = 5) -> str | None:
        """The warning text: per kind, the total and the files it happened in (the first `listed`)."""
        parts = []
        for kind, text in FIX_KINDS.items():
            files = self.files[kind]
            if not files:
                continue
            names = [f"{name} ({count})" if count > 1 else name for name, count in list(files.items())[:listed]]
            more = f" and {len(files) - listed} more file(s)" if len(files) > listed else ""
            parts.append(f"{sum(files.values())} box(es) {text}: {', '.join(names)}{more}")
        return f"{self.source}: " + "; ".join(parts) if parts else None

    def warn(self) -> None:
        """One warning for the whole dataset, or none when nothing was changed."""
        message = self.message()
        if message:
            warnings.warn(message, stacklevel=3)


class DetectionDataset(Dataset):
    """Records read from disk (or drawn in memory), transformed by albumentations.

    Subclasses fill `records`, `class_names` (index 0 = "__background__") and `category_ids`
    (COCO category id of each contiguous label; index 0 unused).

    Each item is a dict: "image" (3, S, S) float32 normalised, "boxes" (G, 4) in input pixels,
    "labels" (G,), "image_id" (int), "name", "path" (None for in-memory images) and "size" (H, W) of
    the file; `collate` turns items into the detection batch.

    With `skip_corrupt`, an image that cannot be decoded is reported in a warning naming it, once. An
    evaluation split gives None for it (`collate` drops it, evaluation leaves the image out); a training
    split (`refill = True`, set by the data module) gives the next readable image instead, so a batch
    keeps its size: a batch shrunk to one image would stop SSDLite's batch norm, and a smaller one
    would weigh its images differently.

    Args:
        transform: Albumentations Compose with bbox params (see `tasks.detection.transforms`).
        skip_corrupt: Skip images that cannot be decoded (with a warning) instead of failing.
    """

    records: list[Record]
    class_names: list[str]
    category_ids: list[int]
    source: str
    refill: bool = False

    def __init__(self, transform: Callable | None = None, skip_corrupt: bool = False) -> None:
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.corrupt: set[int] = set()  # indices found undecodable (per process: workers find their own)

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, record: Record) -> np.ndarray:
        """(H, W, 3) uint8 image of a record."""
        return read_rgb(record.path)

    def __getitem__(self, index: int) -> dict | None:
        item = self._item(index)
        if item is not None or not self.refill:
            return item
        for step in range(1, len(self)):  # the next readable image takes the corrupt one's place
            item = self._item((index + step) % len(self))
            if item is not None:
                return item
        raise CorruptImageError(f"every image of {self.source} is corrupt; nothing to train on")

    def _item(self, index: int) -> dict | None:
        if index in self.corrupt:
            return None
        record = self.records[index]
        try:
            image = self.load_image(record)
        except CorruptImageError as err:
            if not self.skip_corrupt:
                raise
            self.corrupt.add(index)
            instead = "the next readable image is used instead" if self.refill else "left out"
            warnings.warn(f"skipping corrupt image {record.path} (skip_corrupt=True; {instead}): {err}", stacklevel=3)
            return None
        keep = ~record.difficult if len(record.difficult) else np.ones(len(record.boxes), dtype=bool)
        boxes, labels = record.boxes[keep], record.labels[keep]
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
            image, boxes, labels = out["image"], out["bboxes"], out["labels"]
        else:
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255
        return {
            "image": image,
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": record.image_id,
            "name": os.path.splitext(os.path.basename(record.path))[0] if record.path else f"image_{record.image_id}",
            "path": record.path,
            "size": (record.height, record.width),
        }

    def to_coco(self) -> dict:
        """Ground truth in the COCO instances format (VOC difficult boxes become `iscrowd` = ignored)."""
        images, annotations = [], []
        for record in self.records:
            images.append(
                {
                    "id": record.image_id,
                    "width": record.width,
                    "height": record.height,
                    "file_name": os.path.basename(record.path or f"{record.image_id}.png"),
                }
            )
            difficult = record.difficult if len(record.difficult) else np.zeros(len(record.boxes), dtype=bool)
            for box, label, hard in zip(record.boxes, record.labels, difficult):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": self.category_ids[int(label)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(hard),
                    }
                )
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids[1:], self.class_names[1:])]
        return {"images": images, "annotations": annotations, "categories": categories}


def collate(batch: Sequence[dict | None]) -> dict:
    """The detection batch; the `None` of skipped corrupt images is dropped.

    Returns:
        {"image": (N, 3, S, S), "targets": [{"boxes": (G, 4) input pixels, "labels": (G,)}] (absent for
        unlabelled predict images), "image_id", "name", "path", "size" (H, W of each file): lists}.
    """
    batch = [item for item in batch if item is not None]
    out: dict = {"image": torch.stack([s["image"] for s in batch]) if batch else torch.zeros(0, 3, 1, 1)}
    if not batch or "boxes" in batch[0]:
        out["targets"] = [{"boxes": s["boxes"], "labels": s["labels"]} for s in batch]
    for key in ("image_id", "name", "path", "size"):
        out[key] = [s.get(key) for s in batch]
    return out
