"""Colour + 16-bit depth PNG pairs: the generic RGB-D folder (7-Scenes, TUM, ...) and list files.

Depth PNGs store integers in sensor units: metres = value / depth_scale (7-Scenes and NYU PNGs:
1000 = millimetres, TUM: 5000, KITTI: 256). Values listed in `invalid_values` (and 0) mean "no
measurement" and become 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.common.images import orientation_note, read_rgb, read_uint16
from tasks.depth.datasets.base import DepthDataset

Pair = tuple[Path, Path]


def folder_pairs(
    root: str | os.PathLike,
    color_suffix: str = ".color.jpg",
    depth_suffix: str = ".depth.png",
    start: int = 0,
    stop: int | None = None,
) -> list[Pair]:
    """Pairs of a flat folder where `X<color_suffix>` goes with `X<depth_suffix>` (7-Scenes layout).

    Args:
        root: The folder.
        color_suffix: End of colour file names.
        depth_suffix: End of depth file names.
        start: First pair (in sorted order) to keep.
        stop: One past the last pair to keep (None: to the end; negative counts from the end).

    Returns:
        (colour, depth) paths, sorted by name.

    Raises:
        FileNotFoundError: No such folder, no colour file, or a colour file without its depth file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RGB-D folder not found: {root}")
    colors = sorted(root.glob(f"*{color_suffix}"))
    if not colors:
        raise FileNotFoundError(f"no colour images matching '*{color_suffix}' in {root}")
    pairs = []
    for color in colors:
        depth = color.with_name(color.name[: -len(color_suffix)] + depth_suffix)
        if not depth.is_file():
            raise FileNotFoundError(f"colour image {color} has no depth file {depth}")
        pairs.append((color, depth))
    return pairs[start:stop]


def list_pairs(
    list_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    depth_root: str | os.PathLike | None = None,
) -> list[Pair]:
    """Pairs from a list file of `colour depth [anything]` lines (BTS's NYU / KITTI lists, TUM associations).

    Lines whose depth is "None" (KITTI frames without ground truth) and comment lines are skipped.

    Args:
        list_file: The list; paths in it are relative to the roots.
        image_root: Folder colour paths are relative to (default: the list's folder).
        depth_root: Folder depth paths are relative to (default: image_root).

    Returns:
        (colour, depth) paths in list order.

    Raises:
        FileNotFoundError: The list is missing, or names a file that does not exist.
        ValueError: A line has fewer than two fields, or the list is empty.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"split list file not found: {list_file}")
    image_root = Path(image_root) if image_root is not None else list_file.parent
    depth_root = Path(depth_root) if depth_root is not None else image_root
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise ValueError(f"{list_file}:{number}: expected 'colour depth', got {line!r}")
        if fields[1] == "None":
            continue
        color, depth = image_root / fields[0].lstrip("/"), depth_root / fields[1].lstrip("/")
        for path in (color, depth):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}:{number} names a missing file: {path}")
        pairs.append((color, depth))
    if not pairs:
        raise ValueError(f"split list {list_file} has no usable 'colour depth' line")
    return pairs


def read_depth_png(path: str | os.PathLike, depth_scale: float, invalid_values: Sequence[int] = (0,)) -> np.ndarray:
    """A 16-bit depth PNG in metres, invalid values set to 0.

    Args:
        path: 16-bit PNG (an 8-bit one is rejected with a message naming it).
        depth_scale: Stored units per metre.
        invalid_values: Stored values that mean "no measurement".

    Returns:
        (H, W) float32 metres.
    """
    raw = read_uint16(path)
    invalid = raw == 0
    for value in set(invalid_values) - {0}:  # a comparison per value: np.isin sorts, ~10x slower here
        invalid |= raw == value
    depth = raw.astype(np.float32)
    depth /= np.float32(depth_scale)  # float32 division, as `raw.astype(float32) / depth_scale`
    depth[invalid] = 0.0
    return depth


class RGBDPairDataset(DepthDataset):
    """Samples from (colour, 16-bit depth PNG) pairs.

    Args:
        pairs: (colour, depth) paths, e.g. from `folder_pairs` or `list_pairs`.
        depth_scale: Stored units per metre.
        invalid_values: Stored values that mean "no measurement" (7-Scenes: 0 and 65535).
        transform: See `DepthDataset`.
    """

    def __init__(
        self, pairs: Sequence[Pair], depth_scale: float = 1000.0, invalid_values: Sequence[int] = (0,), transform=None
    ) -> None:
        super().__init__(transform)
        if not pairs:
            raise ValueError("RGBDPairDataset got no (colour, depth) pairs")
        if not depth_scale > 0:
            raise ValueError(f"depth_scale must be positive, got {depth_scale}")
        self.pairs, self.depth_scale = list(pairs), float(depth_scale)
        self.invalid_values = tuple(invalid_values)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str, str]:
        """Read pair `index`, checking that colour and depth are registered at one size."""
        color, depth_path = self.pairs[index]
        image = read_rgb(color)
        depth = read_depth_png(depth_path, self.depth_scale, self.invalid_values)
        if image.shape[:2] != depth.shape:
            raise ValueError(
                f"colour {color} is {image.shape[1]}x{image.shape[0]} but depth {depth_path} is "
                f"{depth.shape[1]}x{depth.shape[0]}; they must be registered at the same size"
                f"{orientation_note(color, depth.shape)}"
            )
        # Frame names repeat across KITTI drives and NYU scenes; the index keeps outputs apart.
        return image, depth, f"{index:06d}_{color.name.split('.')[0]}", str(color)
