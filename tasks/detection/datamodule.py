"""The detection LightningDataModule: synthetic (default), COCO JSON or Pascal VOC, with SSD augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common.data import TaskDataModule
from tasks.detection.datasets import CocoDetection, DetectionDataset, SyntheticDetectionShapes, VocDetection, collate
from tasks.detection.transforms import ImageOnly, eval_transform, train_transform

# Seeds of the synthetic splits, so no split repeats another's images.
SYNTHETIC_SEEDS = {"train": 0, "val": 1, "test": 2}


class DetectionDataModule(TaskDataModule):
    """Train / val / test / predict loaders of one detection dataset.

    Batches: see `tasks.detection.datasets.collate` ("image", "targets" with boxes in input pixels,
    "image_id", "name", "path", "size").

    Args:
        dataset: "synthetic" (built in, offline), "coco" or "voc".
        root: Dataset folder. COCO: `annotations/instances_<split>.json` and `<split>/` images. VOC:
            `Annotations/`, `JPEGImages/`, `ImageSets/Main/<split>.txt`.
        train_split: Split used by `fit` (COCO: train2017; VOC: train or trainval).
        val_split: Split validated during `fit` and by `validate`.
        test_split: Split of `test`.
        image_size: Square input side; None for 320 (SSDLite's size) on real data and 192 on the
            synthetic set, so the default `fit` takes minutes on a CPU.
        augment: Training augmentation: "ssd" (SSD's photometric distortion, zoom-out, IoU-constrained
            crop, flip; also true), "flip" or "none" (also false); None for "ssd" on real data and "flip"
            on the synthetic set (its objects already vary in size and place; zoom-out would make them tiny).
        classes: VOC class names (None: found in the annotations).
        contiguous_labels: COCO labels 1..K (True) or the category ids themselves (False: 91 outputs).
        skip_corrupt: Skip undecodable images with a warning naming each instead of failing (training:
            the next readable image takes its place; evaluation and `predict`: left out).
        synthetic_train_size: Images of the synthetic training split (640 at batch 8: 80 steps an epoch).
        synthetic_val_size: Images of the synthetic validation split, and of the test split.
        **kwargs: The options every task shares (`tasks.common.data.TaskDataModule`).
    """

    DATASETS = ("synthetic", "coco", "voc")
    collate = collate
    MIN_TRAIN_BATCH = 2
    MIN_TRAIN_BATCH_WHY = "SSDLite batch-normalises its last extra layers' 1x1 maps, which one image cannot do"

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        image_size: int | None = None,
        augment: bool | str | None = None,
        classes: list[str] | None = None,
        contiguous_labels: bool = True,
        skip_corrupt: bool = False,
        synthetic_train_size: int = 640,
        synthetic_val_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, root, synthetic_train_size, synthetic_val_size, **kwargs)
        self.image_size = image_size or (192 if dataset == "synthetic" else 320)
        self.augment = augment if augment is not None else ("flip" if dataset == "synthetic" else "ssd")
        train_transform(self.image_size, self.augment)  # a bad value fails here, not in setup()

    def build_split(self, split: str) -> DetectionDataset:
        """The dataset of one split ("train" augmented)."""
        hp = self.hparams
        train = split == "train"
        transform = train_transform(self.image_size, self.augment) if train else eval_transform(self.image_size)
        if hp.dataset == "synthetic":
            seed = SYNTHETIC_SEEDS[split]
            return SyntheticDetectionShapes(
                self.synthetic_length(split), self.image_size, seed=seed, transform=transform
            )
        name = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[split]
        root = Path(hp.root)
        if hp.dataset == "coco":
            annotations = root / "annotations" / f"instances_{name}.json"
            dataset = CocoDetection(root / name, annotations, hp.contiguous_labels, transform, hp.skip_corrupt)
        else:
            dataset = VocDetection(root, name, hp.classes, transform, hp.skip_corrupt)
        dataset.refill = train  # a corrupt training image is replaced, so batches keep their size
        return dataset

    def predict_transform(self) -> ImageOnly:
        """Resize to the square input and normalise."""
        return ImageOnly(eval_transform(self.image_size))

    def _labelled(self) -> DetectionDataset | None:
        return next((d for d in self.datasets.values() if isinstance(d, DetectionDataset)), None)

    @property
    def num_classes(self) -> int | None:
        """Classes including the background, from whichever labelled split is loaded (None before setup)."""
        dataset = self._labelled()
        return dataset.num_classes if dataset is not None else None

    @property
    def class_names(self) -> list[str] | None:
        """Class names, index 0 the background (None when no labelled split is loaded)."""
        dataset = self._labelled()
        return dataset.class_names if dataset is not None else None
