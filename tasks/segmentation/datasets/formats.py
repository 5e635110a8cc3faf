"""Where the real datasets keep their files, and what their label values mean.

Each `*_samples(root, split)` lists (image, mask) pairs from a dataset's own layout; the matching
`DatasetSpec` says how many classes it has, their names, and how raw label values map to train ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.segmentation.datasets.base import IGNORE_INDEX, Sample, check_exists, identity_lut

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetSpec:
    """Classes of a dataset and the mapping from its stored label values.

    Attributes:
        class_names: One name per train id.
        lut: Raw value -> train id (IGNORE_INDEX ignored, -1 invalid); None keeps 0..K-1 and 255.
    """

    class_names: tuple[str, ...]
    lut: np.ndarray | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


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


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


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
    ids = _read_list(lists / f"{split}.txt")
    samples = [Sample(voc / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png") for i in ids]
    return check_exists(samples, lists / f"{split}.txt")


# --- Cityscapes (Cordts et al., CVPR 2016): labelIds -> the 19 train ids of cityscapesScripts' labels.py.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[:34] = IGNORE_INDEX  # the 15 unused label ids (0-6, 9, 10, 14-16, 18, 29, 30) are ignored
    lut[list(_CITYSCAPES_IDS)] = np.arange(len(_CITYSCAPES_IDS))
    return lut


def cityscapes_samples(root: Path, split: str) -> list[Sample]:
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelIds.png`."""
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        raise FileNotFoundError(f"no Cityscapes images at {images} (expected leftImg8bit/<split>/<city>/)")
    samples = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        samples.append(Sample(image, root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"))
    return check_exists(samples, images)


# --- CamVid in SegNet's preparation (Brostow et al., PRL 2009; Badrinarayanan et al., TPAMI 2017).
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip


def _resolve(root: Path, listed: str) -> Path:
    # SegNet's lists hold absolute paths of the authors' machine (/SegNet/CamVid/train/x.png):
    # fall back to the last two components under root.
    path = Path(listed)
    if path.is_absolute() and path.is_file():
        return path
    direct = root / listed.lstrip("/")
    return direct if direct.is_file() or not path.is_absolute() else root / Path(*path.parts[-2:])


def camvid_samples(root: Path, split: str) -> list[Sample]:
    """SegNet list file `<root>/<split>.txt`: one `image label` pair per line; label 11 is ignored."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"CamVid list file not found: {list_file}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{number}: expected 'image label', got {line!r}")
        samples.append(Sample(_resolve(root, parts[0]), _resolve(root, parts[1])))
    return check_exists(samples, list_file)


# --- ADE20K SceneParsing (Zhou et al., CVPR 2017): 0 is "other" (ignored), 1..150 are the classes.
def _ade_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1:151] = np.arange(150)
    return lut


def ade20k_samples(root: Path, split: str) -> list[Sample]:
    """`images/{training,validation}/*.jpg` with `annotations/<same>/*.png` (ADEChallengeData2016)."""
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}.get(split, split)
    images = root / "images" / folder
    if not images.is_dir():
        raise FileNotFoundError(f"no ADE20K images at {images} (expected ADEChallengeData2016/images/{folder}/)")
    samples = [Sample(p, root / "annotations" / folder / f"{p.stem}.png") for p in sorted(images.glob("*.jpg"))]
    return check_exists(samples, images)


# --- A generic folder: images/ and masks/ with the same stems (masks as index PNGs).
def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_samples(root: Path, split: str) -> list[Sample]:
    """`<root>/<split>/{images,masks}/`, or `<root>/{images,masks}/` filtered by `<root>/<split>.txt` of stems."""
    base = root / split if (root / split / "images").is_dir() else root
    images = list_images(base / "images")
    list_file = root / f"{split}.txt"
    if base is root and list_file.is_file():
        wanted = set(_read_list(list_file))
        images = [p for p in images if p.stem in wanted]
    samples = [Sample(p, base / "masks" / f"{p.stem}.png") for p in images]
    return check_exists(samples, base)


SPECS = {
    "voc": DatasetSpec(VOC_CLASSES),
    "cityscapes": DatasetSpec(CITYSCAPES_CLASSES, _cityscapes_lut()),
    "camvid": DatasetSpec(CAMVID_CLASSES, identity_lut(11, (11, IGNORE_INDEX))),
    "ade20k": DatasetSpec(tuple(f"class_{i}" for i in range(1, 151)), _ade_lut()),
}
LISTERS = {"voc": voc_samples, "cityscapes": cityscapes_samples, "camvid": camvid_samples, "ade20k": ade20k_samples}
