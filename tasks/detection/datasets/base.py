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


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clip boxes to the image and find the degenerate ones.

    Args:
        boxes: (G, 4) x1y1x2y2 in pixels.
        width: Image width.
        height: Image height.

    Returns:
        The clipped boxes, a (G,) keep mask (positive area after clipping), the number of boxes that
        had to be clipped and the number dropped.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = np.any(clipped != boxes, axis=1) & keep
    return clipped, keep, int(changed.sum()), int((~keep).sum())


def warn_box_fixes(source: str, num_clipped: int, num_dropped: int) -> None:
    """One warning that counts the boxes clipped to the image and dropped for zero area."""
    if num_clipped or num_dropped:
        warnings.warn(
            f"{source}: clipped {num_clipped} box(es) that extended outside their image and dropped "
            f"{num_dropped} box(es) of zero area (after clipping)",
            stacklevel=3,
        )


class DetectionDataset(Dataset):
    """Records read from disk (or drawn in memory), transformed by albumentations.

    Subclasses fill `records`, `class_names` (index 0 = "__background__") and `category_ids`
    (COCO category id of each contiguous label; index 0 unused).

    Each item is a dict: "image" (3, S, S) float32 normalised, "boxes" (G, 4) in input pixels,
    "labels" (G,), "image_id" (int), "name", "path" (None for in-memory images) and "size" (H, W) of
    the file; `collate` turns items into the detection batch.

    Args:
        transform: Albumentations Compose with bbox params (see `tasks.detection.transforms`).
        skip_corrupt: Skip images that cannot be decoded (with a warning) instead of failing.
    """

    records: list[Record]
    class_names: list[str]
    category_ids: list[int]
    source: str

    def __init__(self, transform: Callable | None = None, skip_corrupt: bool = False) -> None:
        self.transform = transform
        self.skip_corrupt = skip_corrupt

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
        record = self.records[index]
        try:
            image = self.load_image(record)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            warnings.warn(f"skipping corrupt image {record.path} (skip_corrupt=True)", stacklevel=2)
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
