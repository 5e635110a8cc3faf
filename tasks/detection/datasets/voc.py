"""Pascal VOC XML (`Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/<split>.txt`) with the difficult flag."""

from __future__ import annotations

import difflib
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from tasks.common.images import CorruptImageError, image_size
from tasks.detection.datasets.base import BoxFixes, DetectionDataset, Record, sanitize_boxes

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _size(root: ET.Element, key: str) -> int | None:
    text = root.findtext(f"size/{key}")
    return None if text is None or not text.strip() else int(float(text))


def parse_voc_xml(path: Path) -> dict:
    """Header size (None where absent) and objects of one VOC annotation file, with errors naming the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"cannot parse VOC annotation {path}: {err}") from err
    try:
        width, height = _size(root, "width"), _size(root, "height")
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


def _normalised(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def near_duplicates(counts: dict[str, int], cutoff: float = 0.8) -> list[tuple[str, str]]:
    """Pairs (rarer, commoner) of class names that are probably one class spelled two ways.

    Two names are close when they are equal ignoring case, spaces, '-' and '_', or their lower-case
    similarity (difflib's ratio) is at least `cutoff` ("Platlets" / "Platelets": 0.94; "RBC" / "WBC":
    0.67 and "cat" / "car": 0.67 are not close).
    """
    names = sorted(counts, key=lambda n: (-counts[n], n))
    pairs = []
    for i, common in enumerate(names):
        for rare in names[i + 1 :]:
            same = _normalised(rare) == _normalised(common)
            if same or difflib.SequenceMatcher(None, rare.lower(), common.lower()).ratio() >= cutoff:
                pairs.append((rare, common))
    return pairs


def discover_classes(root: Path) -> list[str]:
    """Sorted object names over every annotation of a VOC folder, refusing probable misspellings.

    Without `--data.classes` the classes are the names found; a misspelled name would silently become an
    extra class, so names that look like one class spelled two ways are an error that lists every name
    with its box count, the suspect pairs and the files of the rarer spelling. The found classes are
    printed (one line) so an unexpected one is seen.

    Raises:
        ValueError: Two names are near-duplicates (see `near_duplicates`), or no object is annotated.
    """
    counts: dict[str, int] = {}
    files: dict[str, list[str]] = {}
    for path in sorted((root / "Annotations").glob("*.xml")):
        for obj in parse_voc_xml(path)["objects"]:
            counts[obj["name"]] = counts.get(obj["name"], 0) + 1
            if not files.get(obj["name"]) or files[obj["name"]][-1] != path.name:
                files.setdefault(obj["name"], []).append(path.name)
    if not counts:
        raise ValueError(f"no annotated object in {root / 'Annotations'}; pass --data.classes or check the folder")
    listing = ", ".join(f"{name} ({counts[name]})" for name in sorted(counts))
    suspects = near_duplicates(counts)
    if suspects:
        lines = []
        for rare, common in suspects:
            where = ", ".join(files[rare][:5]) + (f" and {len(files[rare]) - 5} more" if len(files[rare]) > 5 else "")
            lines.append(
                f"'{rare}' ({counts[rare]} box(es), in {where}) looks like a misspelling of '{common}' "
                f"({counts[common]} box(es))"
            )
        raise ValueError(
            f"{root / 'Annotations'}: class names found: {listing}. " + "; ".join(lines) + ". Fix the "
            "annotations, or pass --data.classes with the intended names (a name outside that list is then an "
            "error naming its file)"
        )
    rank_zero_info(f"VOC classes found in {root / 'Annotations'} (boxes): {listing}; --data.classes fixes the list")
    return sorted(counts)


class VocDetection(DetectionDataset):
    """One split of a VOC-format folder.

    Image sizes come from the image files (their headers, EXIF orientation applied), not from the
    XML's `<size>`, which exports often leave 0x0 or stale; a disagreement is reported in one warning
    that names the XML files. Box fixes (clipped, dropped as inverted, zero-area or outside) are reported
    in one warning naming the XML files too.

    Args:
        root: Folder with `Annotations/`, `JPEGImages/` and `ImageSets/Main/`.
        split: Name of the list file in `ImageSets/Main/` (train, val, test, trainval).
        classes: Class names (label i + 1 = classes[i]); None for the names found in all annotations
            (see `discover_classes`: near-duplicate names are refused).
        transform: Albumentations pipeline.
        skip_corrupt: Skip undecodable images with a warning (their XML size is used as is).
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
        fixes = BoxFixes(str(list_file))
        resized: list[str] = []
        for index, stem in enumerate(line.split()[0] for line in list_file.read_text().splitlines() if line.strip()):
            xml_path = root / "Annotations" / f"{stem}.xml"
            if not xml_path.is_file():
                raise FileNotFoundError(f"{list_file} lists '{stem}' but {xml_path} does not exist")
            ann = parse_voc_xml(xml_path)
            unknown = sorted({o["name"] for o in ann["objects"]} - set(label_of))
            if unknown:
                raise ValueError(f"{xml_path}: object class(es) {unknown} are not in the class list {classes}")
            image_path = root / "JPEGImages" / (ann["filename"] or f"{stem}.jpg")
            if not image_path.is_file():
                image_path = root / "JPEGImages" / f"{stem}.jpg"
            if not image_path.is_file():
                raise FileNotFoundError(f"{xml_path}: its image {image_path} does not exist")
            width, height = self._image_size(image_path, ann)
            if (ann["width"], ann["height"]) != (width, height):
                header = f"{ann['width']}x{ann['height']}" if ann["width"] is not None else "missing"
                resized.append(f"{xml_path} (<size> {header}, image {width}x{height})")
            boxes = np.asarray([o["box"] for o in ann["objects"]], dtype=np.float32)
            boxes, keep, counts = sanitize_boxes(boxes, width, height)
            fixes.add(str(xml_path), counts)
            labels = np.asarray([label_of[o["name"]] for o in ann["objects"]], dtype=np.int64)
            difficult = np.asarray([o["difficult"] for o in ann["objects"]], dtype=bool)
            self.records.append(
                Record(index + 1, str(image_path), width, height, boxes[keep], labels[keep], difficult[keep])
            )
        if resized:
            more = f" and {len(resized) - 5} more" if len(resized) > 5 else ""
            warnings.warn(
                f"{list_file}: {len(resized)} annotation(s) give a <size> that differs from their image; the "
                f"image's size is used (boxes are kept in the image's pixels): {'; '.join(resized[:5])}{more}",
                stacklevel=2,
            )
        fixes.warn()

    def _image_size(self, image_path: Path, ann: dict) -> tuple[int, int]:
        """(width, height) of the image as displayed; the XML's with skip_corrupt when it cannot be read."""
        try:
            height, width = image_size(image_path)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            return ann["width"] or 0, ann["height"] or 0  # never read: __getitem__ skips it
        return width, height
