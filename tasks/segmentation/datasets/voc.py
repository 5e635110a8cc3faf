"""Pascal VOC 2012 segmentation (+ SBD's train_aug), as DeepLab prepares it."""

from __future__ import annotations

from pathlib import Path

from tasks.segmentation.datasets.base import DatasetSpec, Sample, check_exists, read_list

# --- Pascal VOC 2012 (Everingham et al., IJCV 2010); boundaries are stored as 255.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no Pascal VOC 2012 folder (with JPEGImages/) at {root} or {root}/VOCdevkit/VOC2012")


def voc_samples(root: Path, split: str, use_sbd: bool = True) -> list[Sample]:
    """VOC 2012 `ImageSets/Segmentation/<split>.txt`; "train" becomes SBD's "train_aug" when present.

    The augmented set (Hariharan et al., ICCV 2011) is used as DeepLab prepares it:
    `SegmentationClassAug/` with index PNGs and `ImageSets/Segmentation/train_aug.txt`.
    """
    voc = _voc_root(root)
    lists = voc / "ImageSets" / "Segmentation"
    if split == "train" and use_sbd and (lists / "train_aug.txt").is_file() and (voc / "SegmentationClassAug").is_dir():
        split = "train_aug"
    masks = voc / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    ids = read_list(lists / f"{split}.txt")
    samples = [Sample(voc / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png") for i in ids]
    return check_exists(samples, lists / f"{split}.txt")


SPEC = DatasetSpec(VOC_CLASSES)
