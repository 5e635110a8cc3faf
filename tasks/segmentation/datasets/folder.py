"""A generic folder: `images/` and `masks/` with the same stems (masks as index PNGs)."""

from __future__ import annotations

from pathlib import Path

from tasks.common.data import list_images
from tasks.segmentation.datasets.base import Sample, check_exists, read_list


def folder_samples(root: Path, split: str) -> list[Sample]:
    """`<root>/<split>/{images,masks}/`, or `<root>/{images,masks}/` filtered by `<root>/<split>.txt` of stems."""
    base = root / split if (root / split / "images").is_dir() else root
    images = list_images(base / "images")
    list_file = root / f"{split}.txt"
    if base is root and list_file.is_file():
        wanted = set(read_list(list_file))
        images = [p for p in images if p.stem in wanted]
    samples = [Sample(p, base / "masks" / f"{p.stem}.png") for p in images]
    return check_exists(samples, base)
