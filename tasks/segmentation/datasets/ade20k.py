"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 0 ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.segmentation.datasets.base import IGNORE_INDEX, DatasetSpec, Sample, check_exists


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


SPEC = DatasetSpec(tuple(f"class_{i}" for i in range(1, 151)), _ade_lut())
