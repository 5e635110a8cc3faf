"""Reading images and label maps from disk with errors that name the file.

Every reader honours the EXIF Orientation tag (phone cameras store the sensor's pixels and a tag that
says how to turn them): the array is the image as a viewer displays it, so a portrait photo saved
sideways with Orientation=6 is read as portrait. Annotations (masks, depth maps, boxes) must therefore
be in the displayed image's pixels; `image_size` gives that size without decoding the pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# EXIF orientations that turn the image a quarter (the displayed width is the stored height).
_QUARTER_TURNS = (5, 6, 7, 8)


class CorruptImageError(ValueError):
    """An image file cannot be decoded."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1..8) of an opened image.

    1 when the tag is absent or the EXIF block unreadable: a broken EXIF block must not make the
    pixels unreadable.
    """
    try:
        value = int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (SyntaxError, ValueError, TypeError, OSError, KeyError):
        return 1
    return value if 1 <= value <= 8 else 1


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not inside a worker later
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err
    if exif_orientation(image) != 1:
        ImageOps.exif_transpose(image, in_place=True)  # the pixels as displayed
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied), from its header only.

    Args:
        path: Image file.

    Raises:
        FileNotFoundError: No such file.
        CorruptImageError: The header cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = exif_orientation(image) in _QUARTER_TURNS
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err
    return (width, height) if turned else (height, width)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read any image as 8-bit RGB.

    Grayscale is repeated to 3 channels, alpha is dropped (composited on black), 16-bit images are
    scaled to 8 bits by their full range, palette images are expanded, and the EXIF orientation is
    applied (the array is the image as displayed).

    Args:
        path: Image file.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        FileNotFoundError: No such file.
        CorruptImageError: The file cannot be decoded.
    """
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label map (8-bit, 16-bit or palette PNG) without changing its values.

    Args:
        path: Label image.

    Returns:
        (H, W) int64 array of the stored values (palette indices for palette PNGs).

    Raises:
        FileNotFoundError: No such file.
        CorruptImageError: The file cannot be decoded.
        ValueError: The file has colour channels (an RGB-encoded mask).
    """
    image = _open(path)
    if image.mode in ("RGB", "RGBA"):
        raise ValueError(
            f"label map {path} is an {image.mode} image; expected one channel of class indices "
            f"(palette or grayscale PNG). Convert colour-coded masks to indices first."
        )
    return np.asarray(image).astype(np.int64)


def read_uint16(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit single-channel PNG (depth in the sensor's units) as is.

    Args:
        path: 16-bit PNG.

    Returns:
        (H, W) uint16 array.

    Raises:
        FileNotFoundError: No such file.
        CorruptImageError: The file cannot be decoded.
        ValueError: The file is not 16-bit (an 8-bit visualisation instead of raw depth, say).
    """
    image = _open(path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(
            f"{path} is a {image.mode} image, not a 16-bit single-channel PNG; raw depth must be stored "
            f"as 16-bit integers (an 8-bit PNG is usually a visualisation, not depth)"
        )
    return np.asarray(image).astype(np.uint16)


def orientation_note(path: str | os.PathLike, other: tuple[int, int]) -> str:
    """A hint for a size mismatch caused by EXIF orientation, or "" when that is not the cause.

    Args:
        path: The photo, read as displayed (EXIF orientation applied).
        other: (H, W) of the file that should have the photo's size (a mask, a depth map).
    """
    try:
        with Image.open(path) as image:
            orientation = exif_orientation(image)
            width, height = image.size
    except (OSError, SyntaxError, UnidentifiedImageError):
        return ""
    if orientation == 1 or (height, width) != tuple(other):
        return ""
    return (
        f"; {path} is stored {width}x{height} with EXIF Orientation={orientation}, which is honoured, so it is "
        f"read as displayed: annotate the displayed image (or re-save the photo without the tag)"
    )
