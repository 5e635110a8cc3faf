"""COCO instances JSON (pycocotools): crowd regions ignored, contiguous labels mapped back to category ids."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from tasks.detection.datasets.base import BoxFixes, DetectionDataset, Record, sanitize_boxes


def load_coco(annotation_file: str | os.PathLike) -> COCO:
    """A pycocotools COCO object, with a clear error for a missing or malformed file."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO instances file: it lacks {missing}")
    return coco_from_dict(data)


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO object of an in-memory instances dict, without its index-building chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(DetectionDataset):
    """Images and boxes of a COCO instances file.

    Crowd annotations are left out of training (pycocotools ignores them in evaluation); boxes
    outside their image are clipped and empty ones dropped, with one warning counting them.

    Args:
        image_dir: Folder of the images (`file_name` is relative to it).
        annotation_file: `instances_*.json`.
        contiguous_labels: Labels 1..K in category-id order (True), or the category ids themselves
            (False: 91 outputs for COCO, the papers' label map).
        transform: Albumentations pipeline.
        skip_corrupt: Skip undecodable images with a warning.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        contiguous_labels: bool = True,
        transform=None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        self.annotation_file = str(annotation_file)
        self.source = self.annotation_file
        self.coco = load_coco(annotation_file)
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if contiguous_labels:
            self.category_ids = [0] + [c["id"] for c in categories]
            self.class_names = ["__background__"] + [c["name"] for c in categories]
        else:
            names = {c["id"]: c["name"] for c in categories}
            self.category_ids = list(range(max(names) + 1))
            self.class_names = ["__background__"] + [names.get(i, f"unused_{i}") for i in range(1, max(names) + 1)]
        label_of = {cid: label for label, cid in enumerate(self.category_ids) if label > 0}
        self.records = []
        fixes = BoxFixes(self.annotation_file)
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["category_id"] not in label_of:
                    raise ValueError(
                        f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id} has category_id "
                        f"{ann['category_id']}, which is not in the file's categories {sorted(label_of)}"
                    )
                if ann.get("iscrowd", 0):
                    continue
                x, y, w, h = ann["bbox"]
                boxes.append([x, y, x + w, y + h])
                labels.append(label_of[ann["category_id"]])
            boxes, keep, counts = sanitize_boxes(np.asarray(boxes), info["width"], info["height"])
            fixes.add(f"image {image_id} ({info['file_name']})", counts)
            self.records.append(
                Record(
                    image_id,
                    str(Path(image_dir) / info["file_name"]),
                    info["width"],
                    info["height"],
                    boxes[keep],
                    np.asarray(labels, dtype=np.int64)[keep],
                )
            )
        fixes.warn()

    def to_coco(self) -> dict:
        """The original annotations (crowd regions included, so pycocotools ignores them as usual)."""
        return self.coco.dataset
