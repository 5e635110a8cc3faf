"""Issue 14: the bad inputs real users bring, one test (or a few) per numbered case of the issue.

Each test uses a real sample file from LITEDENSE_TEST_DATA (skipping with a reason when it is absent) or
a lightly damaged copy the test makes in tmp_path: a JPEG re-saved with EXIF Orientation=6, a VOC XML
with a wrong or 0x0 <size>, an inverted box, a misspelled class, an undecodable file. Where the case
does not need a real photo, a synthetic one runs everywhere. The list users read is docs/bad_inputs.md.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.common.data import PredictFolder
from tasks.common.files import atomic_path, save_png_atomic, write_json_atomic
from tasks.common.images import image_size, read_label_map, read_rgb
from tasks.segmentation.datasets import Sample, SegmentationDataset
from tasks.segmentation.transforms import eval_transform

BCCD = "detection/bccd/BCCD"
SEVENSCENES = "depth/sevenscenes"
ORIENTATION = 0x0112  # the EXIF tag


def _bccd(shared_data: Path) -> Path:
    root = shared_data / BCCD
    if not (root / "Annotations").is_dir():
        pytest.skip(f"BCCD sample not found under {shared_data}")
    return root


def _save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    """Store `pixels` as they come off the sensor, with the tag that says how to turn them for display."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def _stored_pixels(path: Path) -> np.ndarray:
    """The decoded pixels as stored, orientation ignored (the reference the tests turn by hand)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _smooth_photo(height: int = 60, width: int = 90) -> np.ndarray:
    """A synthetic landscape 'photo' with an asymmetric gradient, so a wrong turn is visible."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + 2 * y) % 256], axis=2).astype(np.uint8)


# --- 5. Outputs are readable per the umask -------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_5_atomic_files_get_the_umask_mode_not_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        reference = tmp_path / "plain.txt"
        reference.write_text("x")  # what any other new file of this process gets
        save_png_atomic(Image.new("L", (4, 3)), tmp_path / "mask.png")
        write_json_atomic(tmp_path / "metrics.json", {"AP": 0.5})
        with atomic_path(tmp_path / "image.jpg") as tmp:
            Image.new("RGB", (4, 3)).save(tmp, format="JPEG")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(reference.stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("mask.png", "metrics.json", "image.jpg"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


# --- 2. EXIF orientation is honoured on read ------------------------------------------------------------


def _orientation_cases(tmp_path: Path, pixels: np.ndarray) -> dict[int, tuple[Path, np.ndarray]]:
    # Orientation -> what a viewer shows, turned by numpy from the stored pixels.
    turns = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}
    cases = {}
    for orientation, turn in turns.items():
        path = tmp_path / f"photo_{orientation}.jpg"
        _save_with_orientation(pixels, path, orientation)
        cases[orientation] = (path, turn(_stored_pixels(path)))
    return cases


def test_2_exif_orientation_is_applied_synthetic(tmp_path):
    for orientation, (path, displayed) in _orientation_cases(tmp_path, _smooth_photo()).items():
        image = read_rgb(path)
        assert image.shape == displayed.shape, orientation
        np.testing.assert_array_equal(image, displayed)
        assert image_size(path) == displayed.shape[:2]


def test_2_exif_orientation_is_applied_to_a_real_photo(tmp_path, shared_data):
    photo = sorted((_bccd(shared_data) / "JPEGImages").glob("*.jpg"))[0]
    pixels = _stored_pixels(photo)  # 480x640 landscape
    path, displayed = _orientation_cases(tmp_path, pixels)[6]
    image = read_rgb(path)
    assert image.shape == (pixels.shape[1], pixels.shape[0], 3)  # portrait, as the phone shows it
    np.testing.assert_array_equal(image, displayed)


def test_2_predict_folder_and_segmentation_see_the_displayed_photo(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _save_with_orientation(_smooth_photo(60, 90), folder / "phone.jpg", 6)
    item = PredictFolder(folder, eval_transform(None))[0]
    assert tuple(item["size"]) == (90, 60)  # portrait: what the writers size their outputs by
    assert tuple(item["image"].shape[-2:]) == (90, 60)

    # A mask drawn on the displayed (portrait) photo fits; one drawn on the stored pixels is refused with
    # a message that names the EXIF tag.
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((90, 60), np.uint8)).save(good)
    Image.fromarray(np.zeros((60, 90), np.uint8)).save(bad)
    dataset = SegmentationDataset(
        [Sample(folder / "phone.jpg", good), Sample(folder / "phone.jpg", bad)], 2, None, eval_transform(None)
    )
    assert tuple(dataset[0]["mask"].shape) == (90, 60)
    with pytest.raises(ValueError, match="EXIF Orientation=6"):
        dataset[1]
    assert read_label_map(good).shape == (90, 60)
