"""`predict` output: one JPEG per image with its boxes drawn, and `predictions.json` with every detection."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from torchvision.io import write_jpeg

from tasks.common.files import atomic_path, write_json_atomic
from tasks.common.images import read_rgb
from tasks.common.writer import TaskPredictionWriter
from tasks.detection.visualize import draw_detections


class DetectionWriter(TaskPredictionWriter):
    """Writes `<name>.jpg` per image and, after the last batch, `predictions.json`.

    The JPEG shows the boxes above `min_score` on the image file (in-memory images get none); the JSON
    holds every detection, boxes in the file's pixels.

    Args:
        min_score: Draw only detections above this score (the JSON keeps them all).
    """

    def __init__(self, min_score: float = 0.3) -> None:
        super().__init__()
        self.min_score = min_score
        self.records: list[dict] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new JSON."""
        super().on_predict_epoch_start(trainer, pl_module)
        self.records = []

    def write_item(self, folder: Path, item: dict, trainer: Trainer, pl_module: LightningModule) -> None:
        """Draw one image's detections; keep them for the JSON."""
        names = pl_module.class_names
        if item["path"]:
            image = torch.from_numpy(read_rgb(item["path"]).copy()).permute(2, 0, 1)
            with atomic_path(folder / f"{item['name']}.jpg") as tmp:
                write_jpeg(draw_detections(image, item, names, self.min_score), str(tmp))
        labels = item["labels"].tolist()
        self.records.append({
            "image": item["path"], "image_id": item["image_id"], "boxes": item["boxes"].tolist(),
            "scores": item["scores"].tolist(), "labels": labels,
            "names": [names[i] for i in labels] if len(names) > max(labels, default=0) else None,
        })  # fmt: skip

    def finish(self, folder: Path, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write `predictions.json`."""
        write_json_atomic(folder / "predictions.json", self.records)
