"""A built-in synthetic detection set (filled squares, discs and triangles) so every command runs offline."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tasks.detection.datasets.common import DetectionDataset, Record

SHAPES = ("square", "disc", "triangle")


class SyntheticShapes(DetectionDataset):
    """Noisy images with 1 to `max_objects` shapes of random colour; the class is the shape.

    Images are drawn from a seed, in memory, so the set is the same on every machine.

    Args:
        num_images: Number of images.
        image_size: Side of the square images.
        max_objects: Most shapes per image.
        seed: Random seed (use different seeds for train and validation).
        transform: Albumentations pipeline.
    """

    def __init__(
        self, num_images: int = 256, image_size: int = 320, max_objects: int = 3, seed: int = 0, transform=None
    ) -> None:
        super().__init__(transform)
        self.image_size, self.seed = image_size, seed
        self.class_names = ["__background__", *SHAPES]
        self.category_ids = list(range(len(self.class_names)))
        self.source = f"synthetic shapes (seed {seed})"
        rng = np.random.default_rng(seed)
        self.records, self._shapes = [], []
        for i in range(num_images):
            boxes, labels = [], []
            for _ in range(rng.integers(1, max_objects + 1)):
                side = rng.uniform(0.15, 0.5) * image_size
                x1, y1 = rng.uniform(0, image_size - side, size=2)
                boxes.append([x1, y1, x1 + side, y1 + side])
                labels.append(rng.integers(1, len(SHAPES) + 1))
            colors = rng.integers(60, 256, size=(len(boxes), 3))
            self._shapes.append(colors)
            self.records.append(
                Record(
                    i + 1,
                    None,
                    image_size,
                    image_size,
                    np.round(np.asarray(boxes, dtype=np.float32)),
                    np.asarray(labels, dtype=np.int64),
                )
            )

    def load_image(self, record: Record) -> np.ndarray:
        """Draw the record's shapes on seeded noise."""
        rng = np.random.default_rng((self.seed, record.image_id))
        noise = rng.integers(0, 80, size=(record.height, record.width, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        for (x1, y1, x2, y2), label, color in zip(record.boxes, record.labels, self._shapes[record.image_id - 1]):
            fill = tuple(int(c) for c in color)
            if SHAPES[label - 1] == "square":
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
            elif SHAPES[label - 1] == "disc":
                draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
            else:
                draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)
        return np.asarray(image)
