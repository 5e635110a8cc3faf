"""SSD data augmentation with albumentations: photometric distortion, zoom-out, IoU-constrained crop, flip, resize.

Liu et al., "SSD", ECCV 2016, section 3.6 "Data augmentation is crucial" (the zoom-out "expansion" and the
crop whose minimum IoU with the objects is drawn from {0.1, 0.3, 0.5, 0.7, 0.9}).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.pytorch import ToTensorV2

from tasks.common.data import IMAGENET_MEAN, IMAGENET_STD

_MEAN_PIXEL = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)


class ZoomOut(A.PadIfNeeded):
    """Place the image at a random position on a canvas up to `max_ratio` times larger, filled with the mean.

    Makes objects small, which SSD's low-resolution maps otherwise rarely see.

    Args:
        max_ratio: Largest canvas side / image side.
        p: Probability.
    """

    def __init__(self, max_ratio: float = 4.0, p: float = 0.5) -> None:
        super().__init__(min_height=1, min_width=1, position="random", border_mode=0, fill=_MEAN_PIXEL, p=p)
        self.max_ratio = max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Random canvas size and position."""
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        pad_h, pad_w = int(height * (ratio - 1)), int(width * (ratio - 1))
        top, left = self.py_random.randint(0, pad_h), self.py_random.randint(0, pad_w)
        return {"pad_top": top, "pad_bottom": pad_h - top, "pad_left": left, "pad_right": pad_w - left}


class MinIoURandomCrop(BaseCrop):
    """SSD's random crop: some box must overlap the crop with at least a minimum IoU.

    The minimum is drawn from `min_ious` (None = keep the whole image); up to `max_trials` crops of
    sides in [min_scale, 1] of the image and aspect ratio in [1/2, 2] are tried. Boxes whose centre
    leaves the crop are removed by the pipeline's `min_visibility`.

    Args:
        min_ious: Choices of minimum IoU.
        min_scale: Smallest crop side relative to the image.
        max_trials: Attempts before giving up and keeping the image.
        p: Probability.
    """

    def __init__(
        self,
        min_ious: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
        min_scale: float = 0.3,
        max_trials: int = 50,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.min_ious, self.min_scale, self.max_trials = min_ious, min_scale, max_trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Crop coordinates (x1, y1, x2, y2) in pixels."""
        height, width = params["shape"][:2]
        whole = {"crop_coords": (0, 0, width, height)}
        min_iou = self.py_random.choice(self.min_ious)
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))))[:, :4] * [width, height, width, height]
        if min_iou is None or len(bboxes) == 0:
            return whole
        for _ in range(self.max_trials):
            w = self.py_random.uniform(self.min_scale, 1.0) * width
            h = self.py_random.uniform(self.min_scale, 1.0) * height
            if not 0.5 <= h / w <= 2.0:
                continue
            x1 = self.py_random.uniform(0, width - w)
            y1 = self.py_random.uniform(0, height - h)
            crop = np.array([x1, y1, x1 + w, y1 + h])
            inter_wh = (np.minimum(bboxes[:, 2:], crop[2:]) - np.maximum(bboxes[:, :2], crop[:2])).clip(0)
            inter = inter_wh[:, 0] * inter_wh[:, 1]
            areas = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
            iou = inter / (areas + w * h - inter)
            if iou.max() >= min_iou:
                return {"crop_coords": (int(x1), int(y1), int(x1 + w), int(y1 + h))}
        return whole


def _bbox_params(min_visibility: float = 0.0) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True,
        filter_invalid_bboxes=True,
    )  # fmt: skip


AUGMENTATIONS = ("ssd", "flip", "none")


def train_transform(image_size: int = 320, augment: bool | str = True) -> A.Compose:
    """The training pipeline, ending in a normalised (3, S, S) tensor.

    Args:
        image_size: Output side (320 for SSDLite).
        augment: "ssd" (or True): SSD's photometric distortion, zoom-out, IoU-constrained crop and flip;
            "flip": horizontal flip only (the synthetic set, whose objects already vary in size and
            place); "none" (or False): resize + normalise only.

    Returns:
        An albumentations Compose taking `image`, `bboxes` (pascal_voc pixels) and `labels`.
    """
    level = ("ssd" if augment else "none") if isinstance(augment, bool) else augment
    if level not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS} (or true / false), got {augment!r}")
    steps: list = []
    if level == "ssd":
        steps += [
            # SSD's photometric distortion: brightness +-32/255, contrast and saturation 0.5-1.5, hue +-18 deg.
            A.ColorJitter(
                brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.5
            ),
            ZoomOut(max_ratio=4.0, p=0.5),
            MinIoURandomCrop(),
        ]
    if level in ("ssd", "flip"):
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.Resize(image_size, image_size), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()]
    # A box must keep 30% of its area through the crop to stay a target.
    return A.Compose(steps, bbox_params=_bbox_params(min_visibility=0.3 if level == "ssd" else 0.0))


def eval_transform(image_size: int = 320) -> A.Compose:
    """Resize to a square and normalise (SSD evaluates on the warped image)."""
    return train_transform(image_size, augment=False)


class ImageOnly:
    """An evaluation pipeline called on an image alone (the predict folder): no boxes go in.

    Args:
        transform: An albumentations Compose with bbox params, e.g. `eval_transform(320)`.
    """

    def __init__(self, transform: A.Compose) -> None:
        self.transform = transform

    def __call__(self, *, image: np.ndarray) -> dict:
        """(H, W, 3) uint8 -> {"image": (3, S, S)}."""
        return {"image": self.transform(image=image, bboxes=np.zeros((0, 4)), labels=[])["image"]}
