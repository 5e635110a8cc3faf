"""A built-in synthetic detection set (red squares, green discs, blue triangles) so every command runs offline.

It exists so that `python -m tasks.detection fit`, with no data and no pretrained weights, visibly learns
in a few CPU minutes: few, large, non-overlapping objects whose class is told by both shape and colour,
on a dark low-contrast background. It checks the pipeline, not a detector's quality.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tasks.detection.datasets.base import DetectionDataset, Record

SHAPES = ("square", "disc", "triangle")
# One saturated colour per class (RGB); each object varies it by up to +-JITTER per channel.
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 90, 240))
JITTER = 25
BACKGROUND_MAX = 70  # background pixels are uniform noise in [0, BACKGROUND_MAX)


class SyntheticDetectionShapes(DetectionDataset):
    """Images with 1 to `max_objects` shapes on dark noise; the class is the shape (and its colour).

    Objects have sides of `min_size` to `max_size` of the image, aspect ratios of 3/4 to 4/3 and do not
    overlap. Images are drawn from the seed, in memory, so the set is the same on every machine.

    Args:
        num_images: Number of images.
        image_size: Side of the square images.
        max_objects: Most shapes per image.
        seed: Random seed (use different seeds for train and validation).
        transform: Albumentations pipeline.
        min_size: Smallest object side, as a fraction of the image side.
        max_size: Largest object side, as a fraction of the image side.
    """

    def __init__(
        self,
        num_images: int = 256,
        image_size: int = 320,
        max_objects: int = 3,
        seed: int = 0,
        transform=None,
        min_size: float = 0.2,
        max_size: float = 0.5,
    ) -> None:
        super().__init__(transform)
        if not 0 < min_size <= max_size < 1:
            raise ValueError(f"need 0 < min_size <= max_size < 1, got min_size={min_size}, max_size={max_size}")
        self.image_size, self.seed = image_size, seed
        self.class_names = ["__background__", *SHAPES]
        self.category_ids = list(range(len(self.class_names)))
        self.source = f"synthetic shapes (seed {seed})"
        rng = np.random.default_rng(seed)
        self.records, self._colours = [], []
        for i in range(num_images):
            boxes = _place_boxes(rng, rng.integers(1, max_objects + 1), image_size, min_size, max_size)
            labels = rng.integers(1, len(SHAPES) + 1, size=len(boxes))
            jitter = rng.integers(-JITTER, JITTER + 1, size=(len(boxes), 3))
            self._colours.append(np.clip(np.asarray(COLOURS)[labels - 1] + jitter, 0, 255))
            self.records.append(
                Record(i + 1, None, image_size, image_size, np.asarray(boxes, np.float32).reshape(-1, 4), labels)
            )

    def load_image(self, record: Record) -> np.ndarray:
        """Draw the record's shapes on seeded dark noise."""
        rng = np.random.default_rng((self.seed, record.image_id))
        noise = rng.integers(0, BACKGROUND_MAX, size=(record.height, record.width, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        for (x1, y1, x2, y2), label, colour in zip(record.boxes, record.labels, self._colours[record.image_id - 1]):
            fill = tuple(int(c) for c in colour)
            if SHAPES[label - 1] == "square":
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
            elif SHAPES[label - 1] == "disc":
                draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
            else:
                draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)
        return np.asarray(image)


def _place_boxes(
    rng: np.random.Generator, count: int, image_size: int, min_size: float, max_size: float, tries: int = 50
) -> list[list[float]]:
    """Up to `count` integer boxes that do not touch each other (a box that finds no room is left out)."""
    boxes: list[list[float]] = []
    for _ in range(tries):
        if len(boxes) == count:
            break
        side = rng.uniform(min_size, max_size) * image_size
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))  # width / height
        w, h = round(side * np.sqrt(aspect)), round(side / np.sqrt(aspect))
        w, h = min(w, image_size), min(h, image_size)
        x1, y1 = int(rng.integers(0, image_size - w + 1)), int(rng.integers(0, image_size - h + 1))
        box = [x1, y1, x1 + w, y1 + h]
        # A 2-pixel gap keeps shapes apart, so every object has a visible outline of its own.
        if all(box[0] >= b[2] + 2 or b[0] >= box[2] + 2 or box[1] >= b[3] + 2 or b[1] >= box[3] + 2 for b in boxes):
            boxes.append(box)
    return boxes
