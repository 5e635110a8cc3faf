"""Pascal VOC XML (`Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/<split>.txt`) with the difficult flag."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.detection.datasets.base import DetectionDataset, Record, sanitize_boxes, warn_box_fixes

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def parse_voc_xml(path: Path) -> dict:
    """Size and objects of one VOC annotation file, with errors that name the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"cannot parse VOC annotation {path}: {err}") from err
    try:
        size = root.find("size")
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append(
                {
                    "name": obj.findtext("name").strip(),
                    "difficult": obj.findtext("difficult", "0").strip() in ("1", "true"),
                    # Coordinates as stored (no 1-based shift), so a zero-area box stays zero-area and is dropped.
                    "box": coords,
                }
            )
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"malformed VOC annotation {path}: missing or non-numeric size/name/bndbox ({err})") from err
    return {"filename": root.findtext("filename"), "width": width, "height": height, "objects": objects}


def discover_classes(root: Path) -> list[str]:
    """Sorted object names over every annotation of a VOC folder."""
    names = set()
    for path in sorted((root / "Annotations").glob("*.xml")):
        names.update(o["name"] for o in parse_voc_xml(path)["objects"])
    return sorted(names)


class VocDetection(DetectionDataset):
    """One split of a VOC-format folder.

    Args:
        root: Folder with `Annotations/`, `JPEGImages/` and `ImageSets/Main/`.
        split: Name of the list file in `ImageSets/Main/` (train, val, test, trainval).
        classes: Class names (label i + 1 = classes[i]); None for the names found in all annotations.
        transform: Albumentations pipeline.
        skip_corrupt: Skip undecodable images with a warning.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: Sequence[str] | None = None,
        transform=None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(transform, skip_corrupt)
        root = Path(root)
        list_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {list_file}")
        self.source = str(list_file)
        classes = list(classes) if classes else discover_classes(root)
        self.class_names = ["__background__", *classes]
        self.category_ids = list(range(len(self.class_names)))
        label_of = {name: i + 1 for i, name in enumerate(classes)}
        self.records = []
        clipped = dropped = 0
        for index, stem in enumerate(line.split()[0] for line in list_file.read_text().splitlines() if line.strip()):
            xml_path = root / "Annotations" / f"{stem}.xml"
            if not xml_path.is_file():
                raise FileNotFoundError(f"{list_file} lists '{stem}' but {xml_path} does not exist")
            ann = parse_voc_xml(xml_path)
            unknown = sorted({o["name"] for o in ann["objects"]} - set(label_of))
            if unknown:
                raise ValueError(f"{xml_path}: object class(es) {unknown} are not in the class list {classes}")
            boxes = np.asarray([o["box"] for o in ann["objects"]], dtype=np.float32)
            boxes, keep, n_clip, n_drop = sanitize_boxes(boxes, ann["width"], ann["height"])
            clipped, dropped = clipped + n_clip, dropped + n_drop
            labels = np.asarray([label_of[o["name"]] for o in ann["objects"]], dtype=np.int64)
            difficult = np.asarray([o["difficult"] for o in ann["objects"]], dtype=bool)
            image_path = root / "JPEGImages" / (ann["filename"] or f"{stem}.jpg")
            if not image_path.is_file():
                image_path = root / "JPEGImages" / f"{stem}.jpg"
            self.records.append(
                Record(
                    index + 1, str(image_path), ann["width"], ann["height"], boxes[keep], labels[keep], difficult[keep]
                )
            )
        warn_box_fixes(str(list_file), clipped, dropped)
