"""Drawing detections, and the `predict` writer (images with boxes + one JSON)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torchvision.io import write_jpeg
from torchvision.utils import draw_bounding_boxes

from tasks.common.files import atomic_path, write_json_atomic
from tasks.common.images import read_rgb
from tasks.detection.transforms import IMAGENET_MEAN, IMAGENET_STD


def draw_detections(
    image: Tensor, detections: dict[str, Tensor], class_names: list[str] | None = None, min_score: float = 0.3
) -> Tensor:
    """Boxes with labels and scores on an image.

    Args:
        image: (3, H, W) uint8, or float normalised with the ImageNet mean / std.
        detections: "boxes" (K, 4) in the image's pixels, "scores" (K,), "labels" (K,).
        class_names: Names by label (index 0 = background), or None to print label numbers.
        min_score: Draw only detections above this score.

    Returns:
        (3, H, W) uint8 image.
    """
    if image.dtype != torch.uint8:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        image = ((image * std + mean).clamp(0, 1) * 255).to(torch.uint8)
    keep = detections["scores"] > min_score
    if not keep.any():  # nothing to draw (draw_bounding_boxes would warn)
        return image
    labels = [
        f"{class_names[int(label)] if class_names else int(label)} {float(score):.2f}"
        for label, score in zip(detections["labels"][keep], detections["scores"][keep])
    ]
    return draw_bounding_boxes(image, detections["boxes"][keep].float(), labels=labels, colors="yellow", width=2)


class DetectionWriter(BasePredictionWriter):
    """Writes `predictions.json` and one JPEG per image with its boxes drawn.

    Args:
        output_dir: Folder to write into (default: `<log_dir>/predictions`).
        min_score: Draw only detections above this score (the JSON keeps them all).
    """

    def __init__(self, output_dir: str | None = None, min_score: float = 0.3) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir, self.min_score = output_dir, min_score

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        """Draw every prediction and write the JSON atomically."""
        out_dir = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        out_dir.mkdir(parents=True, exist_ok=True)
        datamodule = getattr(trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None)
        records = []
        for batch in predictions:
            for det in batch:
                path = det.get("path")
                if path is None:  # a dataset split: look the file up by id
                    dataset = datamodule.datasets["test"]
                    path = next(r.path for r in dataset.records if r.image_id == det["image_id"])
                name = Path(path).stem if path else f"image_{det['image_id']}"
                image = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1) if path else None
                if image is not None:
                    with atomic_path(out_dir / f"{name}.jpg") as tmp:
                        write_jpeg(draw_detections(image, det, names, self.min_score), str(tmp))
                records.append({
                    "image": path, "image_id": det["image_id"], "boxes": det["boxes"].tolist(),
                    "scores": det["scores"].tolist(), "labels": det["labels"].tolist(),
                    "names": [names[i] for i in det["labels"].tolist()] if names else None,
                })  # fmt: skip
        write_json_atomic(out_dir / "predictions.json", records)
        print(f"wrote {len(records)} predictions to {out_dir}")
