"""Issue 14: the bad inputs real users bring, one test (or a few) per numbered case of the issue.

Each test uses a real sample file from LITEDENSE_TEST_DATA (skipping with a reason when it is absent) or
a lightly damaged copy the test makes in tmp_path: a JPEG re-saved with EXIF Orientation=6, a VOC XML
with a wrong or 0x0 <size>, an inverted box, a misspelled class, an undecodable file. Where the case
does not need a real photo, a synthetic one runs everywhere. The list users read is docs/bad_inputs.md.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
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


# --- 3. VOC <size> headers are not trusted; box fixes name the XML; inverted boxes are called inverted --


def _voc_folder(root: Path, images: dict[str, Path], split: str = "train") -> Path:
    """A VOC folder of copies of the given (image, XML) pairs, keyed by stem, listed in `split`."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, xml in images.items():
        shutil.copy(xml, root / "Annotations" / f"{stem}.xml")
        shutil.copy(xml.parent.parent / "JPEGImages" / f"{stem}.jpg", root / "JPEGImages" / f"{stem}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in images))
    return root


def _synthetic_voc(root: Path, objects: list[tuple[str, list[int]]], size=(90, 60), header=(90, 60)) -> Path:
    """A one-image VOC folder: a synthetic photo of `size` (W, H) whose XML says `header` (W, H)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(_smooth_photo(size[1], size[0])).save(root / "JPEGImages" / "img.jpg")
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    (root / "Annotations" / "img.xml").write_text(
        f"<annotation><filename>img.jpg</filename><size><width>{header[0]}</width><height>{header[1]}</height>"
        f"</size>{body}</annotation>"
    )
    (root / "ImageSets" / "Main" / "train.txt").write_text("img\n")
    return root


def _load_voc(root: Path, **kwargs):
    from tasks.detection.datasets import VocDetection

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = VocDetection(root, "train", **kwargs)
    return dataset, [str(w.message) for w in caught]


@pytest.mark.parametrize("header", [(0, 0), (45, 30), (200, 100)])
def test_3_voc_size_header_is_read_from_the_image_synthetic(tmp_path, header):
    boxes = [[10, 5, 80, 50], [60, 40, 88, 58]]
    root = _synthetic_voc(tmp_path / "voc", [("cell", b) for b in boxes], header=header)
    dataset, messages = _load_voc(root, classes=["cell"])
    record = dataset.records[0]
    assert (record.width, record.height) == (90, 60)  # the image's, not the header's
    np.testing.assert_array_equal(record.boxes, np.asarray(boxes, np.float32))  # none clipped or dropped
    xml = str(root / "Annotations" / "img.xml")
    assert any(xml in m and f"<size> {header[0]}x{header[1]}" in m and "image 90x60" in m for m in messages)
    assert not any("dropped" in m or "clipped" in m for m in messages)
    gt = dataset.to_coco()["images"][0]
    assert (gt["width"], gt["height"]) == (90, 60)


def test_3_voc_size_header_is_read_from_a_rotated_phone_photo(tmp_path):
    """A phone photo's XML made on the stored (landscape) pixels: the displayed size wins, with a warning."""
    root = _synthetic_voc(tmp_path / "voc", [("cell", [5, 5, 40, 40])], header=(90, 60))
    _save_with_orientation(_smooth_photo(60, 90), root / "JPEGImages" / "img.jpg", 6)
    dataset, messages = _load_voc(root, classes=["cell"])
    assert (dataset.records[0].width, dataset.records[0].height) == (60, 90)
    assert any("<size> 90x60, image 60x90" in m for m in messages)


def test_3_box_warnings_name_the_xml_and_call_inverted_boxes_inverted(tmp_path):
    objects = [
        ("cell", [10, 5, 80, 50]),
        ("cell", [50, 5, 20, 50]),
        ("cell", [30, 30, 30, 40]),
        ("cell", [0, 0, 95, 50]),
    ]
    root = _synthetic_voc(tmp_path / "voc", objects)
    dataset, messages = _load_voc(root, classes=["cell"])
    xml = str(root / "Annotations" / "img.xml")
    (message,) = [m for m in messages if "box(es)" in m]
    assert f"1 box(es) dropped as inverted (xmax < xmin or ymax < ymin): {xml}" in message
    assert f"1 box(es) dropped for zero area (xmax == xmin or ymax == ymin): {xml}" in message
    assert f"1 box(es) clipped to the image (they extended outside it): {xml}" in message
    np.testing.assert_array_equal(dataset.records[0].boxes, [[10, 5, 80, 50], [0, 0, 90, 50]])


def test_3_real_voc_with_zero_size_wrong_size_and_an_inverted_box(tmp_path, shared_data):
    bccd = _bccd(shared_data)
    stems = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]
    root = _voc_folder(tmp_path / "voc", {s: bccd / "Annotations" / f"{s}.xml" for s in stems})
    original, _ = _load_voc(root)
    xml = [root / "Annotations" / f"{s}.xml" for s in stems]
    xml[0].write_text(xml[0].read_text().replace("<width>640</width>", "<width>0</width>").replace(
        "<height>480</height>", "<height>0</height>"))  # fmt: skip
    xml[1].write_text(xml[1].read_text().replace("<width>640</width>", "<width>320</width>"))
    text = xml[2].read_text()
    first = text.index("<xmin>")
    xmin = text[first + 6 : text.index("</xmin>", first)]
    xmax_at = text.index("<xmax>")
    xmax = text[xmax_at + 6 : text.index("</xmax>", xmax_at)]
    swapped = text[:first] + f"<xmin>{xmax}</xmin>" + text[first:].replace(f"<xmin>{xmin}</xmin>", "", 1)
    swapped = swapped.replace(f"<xmax>{xmax}</xmax>", f"<xmax>{xmin}</xmax>", 1)
    xml[2].write_text(swapped)

    damaged, messages = _load_voc(root)
    for before, after in zip(original.records[:2], damaged.records[:2]):  # header damage changes nothing
        assert (after.width, after.height) == (640, 480)
        np.testing.assert_array_equal(after.boxes, before.boxes)
    assert len(damaged.records[2].boxes) == len(original.records[2].boxes) - 1
    resized = next(m for m in messages if "<size>" in m)
    assert f"{xml[0]} (<size> 0x0, image 640x480)" in resized and f"{xml[1]} (<size> 320x480" in resized
    assert any(f"dropped as inverted (xmax < xmin or ymax < ymin): {xml[2]}" in m for m in messages)


# --- 4. A misspelled class does not silently become an extra class ------------------------------------


def test_4_misspelled_class_is_refused_with_counts_and_the_file_synthetic(tmp_path):
    objects = [("Platelets", [1, 1, 20, 20])] * 3 + [("RBC", [30, 30, 60, 50])] * 2 + [("Platlets", [5, 5, 9, 9])]
    root = _synthetic_voc(tmp_path / "voc", objects)
    with pytest.raises(ValueError) as info:
        _load_voc(root)
    message = str(info.value)
    assert "Platelets (3), Platlets (1), RBC (2)" in message
    assert "'Platlets' (1 box(es), in img.xml) looks like a misspelling of 'Platelets' (3 box(es))" in message
    assert "--data.classes" in message
    # Naming the classes decides: the misspelling is then an unknown class, named with its file.
    with pytest.raises(ValueError, match=r"img.xml: object class\(es\) \['Platlets'\] are not in the class list"):
        _load_voc(root, classes=["Platelets", "RBC"])
    # Distinct names that merely look alike at a glance (RBC / WBC) are classes, not misspellings.
    root = _synthetic_voc(tmp_path / "ok", [("RBC", [1, 1, 20, 20]), ("WBC", [30, 30, 60, 50])])
    dataset, _ = _load_voc(root)
    assert dataset.class_names == ["__background__", "RBC", "WBC"]


def test_4_misspelled_class_in_a_real_voc_file(tmp_path, shared_data):
    bccd = _bccd(shared_data)
    stems = ["BloodImage_00000", "BloodImage_00001"]
    root = _voc_folder(tmp_path / "voc", {s: bccd / "Annotations" / f"{s}.xml" for s in stems})
    path = root / "Annotations" / "BloodImage_00001.xml"
    path.write_text(path.read_text().replace("<name>RBC</name>", "<name>rbc</name>", 1))
    with pytest.raises(ValueError, match=r"'rbc' \(1 box\(es\), in BloodImage_00001.xml\) looks like a misspelling"):
        _load_voc(root)


# --- 1. Detection training with a batch of one image -----------------------------------------------------

DETECTION_TINY = ["--data.image_size=64", "--model.extra_channels=[16, 16, 8, 8]", "--trainer.logger=false"]


def _truncate(path: Path) -> None:
    """Keep the header and a third of the data: the size is readable, the pixels are not (a cut download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _detection_voc(root: Path, shared_data: Path | None, count: int = 4) -> Path:
    """A VOC folder of `count` images listed in train.txt, real BCCD copies or synthetic photos."""
    if shared_data is not None:
        bccd = _bccd(shared_data)
        stems = [p.stem for p in sorted((bccd / "Annotations").glob("*.xml"))[:count]]
        return _voc_folder(root, {s: bccd / "Annotations" / f"{s}.xml" for s in stems})
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.roll(_smooth_photo(60, 90), 7 * i, axis=1)).save(root / "JPEGImages" / f"img{i}.jpg")
        (root / "Annotations" / f"img{i}.xml").write_text(
            "<annotation><size><width>90</width><height>60</height></size><object><name>cell</name>"
            f"<bndbox><xmin>{5 + i}</xmin><ymin>5</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"img{i}\n" for i in range(count)))
    return root


def test_1_a_training_split_of_one_image_is_a_clear_error(tmp_path, monkeypatch):
    from tasks.detection.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"at least 2 images per batch .*1x1 maps.*split has 1 image"):
        main(["fit", "--data.synthetic_train_size=1", "--data.synthetic_val_size=2", *DETECTION_TINY])


def test_1_the_dropped_last_batch_is_said_in_one_line(monkeypatch):
    from tasks.common import data

    notes = []
    monkeypatch.setattr(data, "rank_zero_info", notes.append)
    loader = data.make_loader(list(range(9)), 8, train=True)
    assert len(loader) == 1 and notes == [
        "training uses 8 of the 9 images an epoch: the last incomplete batch (1 image(s), different ones each "
        "epoch) is dropped"
    ]
    notes.clear()
    data.make_loader(list(range(16)), 8, train=True)
    data.make_loader(list(range(9)), 8, train=False)
    assert notes == []


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "bccd"])
def test_1_a_corrupt_image_in_a_batch_of_two_keeps_training(tmp_path, monkeypatch, request, real):
    from tasks.detection.cli import main

    shared = request.getfixturevalue("shared_data") if real else None
    root = _detection_voc(tmp_path / "voc", shared)
    corrupt = sorted((root / "JPEGImages").iterdir())[1]
    _truncate(corrupt)
    monkeypatch.chdir(tmp_path)
    args = [f"--data.root={root}", "--data.dataset=voc", "--data.val_split=train", "--data.test_split=train"]
    seen = []
    from tasks.detection.module import DetectionModule

    original = DetectionModule.training_step

    def spy(self, batch, batch_idx):
        seen.append(len(batch["image"]))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DetectionModule, "training_step", spy)
    with pytest.warns(UserWarning, match=f"skipping corrupt image {corrupt}.*next readable image"):
        cli = main(
            ["fit", *args, "--data.skip_corrupt=true", "--data.batch_size=2", "--trainer.max_epochs=2", *DETECTION_TINY]
        )
    assert seen == [2, 2, 2, 2]  # every batch full: the corrupt image's place is taken
    assert np.isfinite(cli.trainer.callback_metrics["train/loss"].item())


# --- 7. predict honours --data.skip_corrupt ----------------------------------------------------------------


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "bccd"])
def test_7_predict_skips_corrupt_files_and_writes_the_rest(tmp_path, monkeypatch, request, real):
    from tasks.common.images import CorruptImageError
    from tasks.detection.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    if real:
        for photo in sorted((_bccd(request.getfixturevalue("shared_data")) / "JPEGImages").glob("*.jpg"))[:3]:
            shutil.copy(photo, folder / photo.name)
    else:
        for i in range(3):
            Image.fromarray(np.roll(_smooth_photo(), 9 * i, axis=0)).save(folder / f"img{i}.jpg")
    corrupt = sorted(folder.iterdir())[1]
    _truncate(corrupt)
    (folder / "empty.png").write_bytes(b"")  # a failed download
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["predict", "--model.num_classes=2", "--model.score_thresh=0.0", *DETECTION_TINY]
    args += [f"--data.predict_dir={folder}", f"--data.predict_output_dir={out}", "--data.eval_batch_size=1"]
    with pytest.raises(CorruptImageError, match=f"{corrupt.name}|empty.png"):  # without it: stop, naming the file
        main(args)
    with pytest.warns(UserWarning, match=f"skipping corrupt image {corrupt}") as caught:
        main([*args, "--data.skip_corrupt=true"])
    assert any("empty.png" in str(w.message) for w in caught)
    good = sorted(p.stem for p in folder.iterdir() if p not in (corrupt, folder / "empty.png"))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.jpg" for s in good] + ["predictions.json"])
    records = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(r["image"]).stem for r in records) == good
    assert stat.S_IMODE((out / "predictions.json").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- 8. Depth predict: maps at the photo's size; colour maps span the valid range ------------------------


def _depth_predict(folder: Path, out: Path) -> None:
    from tasks.depth.cli import main

    main(["predict", f"--data.predict_dir={folder}", f"--data.predict_output_dir={out}", "--trainer.logger=false"])


def test_8_depth_predict_writes_maps_at_the_photo_size(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_smooth_photo(75, 100)).save(folder / "wide.png")  # 4:3, not the network's 128x96
    _save_with_orientation(_smooth_photo(60, 90), folder / "phone.jpg", 6)  # displays as 60 wide, 90 high
    monkeypatch.chdir(tmp_path)
    _depth_predict(folder, tmp_path / "out")
    for name, size in (("wide", (100, 75)), ("phone", (60, 90))):
        depth, colour = (
            Image.open(tmp_path / "out" / f"{name}_depth.png"),
            Image.open(tmp_path / "out" / f"{name}_color.png"),
        )
        assert depth.size == size and colour.size == size, name  # (W, H) as displayed
        assert depth.mode.startswith("I;16") and np.asarray(depth).max() > 0


def test_8_depth_predict_at_the_size_of_a_real_frame(tmp_path, monkeypatch, shared_data):
    frame = shared_data / SEVENSCENES / "frame-000000.color.jpg"
    if not frame.is_file():
        pytest.skip(f"7-Scenes sample not found under {shared_data}")
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(frame, folder / "kitchen.jpg")
    monkeypatch.chdir(tmp_path)
    _depth_predict(folder, tmp_path / "out")
    assert Image.open(tmp_path / "out" / "kitchen_depth.png").size == Image.open(frame).size == (640, 480)


def test_8_colour_map_of_a_narrow_depth_range_spans_the_colour_map():
    import matplotlib

    from tasks.depth.visualize import depth_to_uint8_rgb

    depth = np.linspace(5.0, 5.2, 100 * 80, dtype=np.float32).reshape(80, 100)  # a wall 5 m away
    depth[:4] = 0.0  # no measurement
    rgb = depth_to_uint8_rgb(depth)
    cmap = matplotlib.colormaps["magma_r"]
    near, far = (np.round(np.asarray(cmap(v)[:3]) * 255).astype(int) for v in (0.0, 1.0))
    np.testing.assert_allclose(rgb[4, 0], near, atol=1)  # the nearest valid depth: the first colour
    np.testing.assert_allclose(rgb[-1, -1], far, atol=1)  # the farthest: the last colour
    assert (rgb[:4] == 0).all()  # invalid pixels stay black
    # The middle of the range is the middle of the colour map (not the 96 % a scale from 0 gives it).
    middle = np.round(np.asarray(cmap(0.5)[:3]) * 255).astype(int)
    assert np.abs(rgb[42, 50].astype(int) - middle).max() <= 12


def test_8_colour_map_of_a_real_depth_frame(shared_data):
    from tasks.depth.datasets.rgbd_folder import read_depth_png
    from tasks.depth.visualize import depth_to_uint8_rgb

    path = shared_data / SEVENSCENES / "frame-000000.depth.png"
    if not path.is_file():
        pytest.skip(f"7-Scenes sample not found under {shared_data}")
    depth = read_depth_png(path, 1000.0, (0, 65535))
    valid = depth > 0
    near_wall = np.where(valid, 2.0 + (depth - depth[valid].min()) * 0.05, 0.0)  # squeezed into ~10 cm
    rgb = depth_to_uint8_rgb(near_wall).reshape(-1, 3)[valid.ravel()]
    # Spread over the colour map: the brightest and darkest valid pixels differ by most of the range.
    brightness = rgb.astype(int).sum(axis=1)
    assert brightness.max() - brightness.min() > 500
    assert (depth_to_uint8_rgb(near_wall)[~valid] == 0).all()


# --- 9. Depth val/loss is the mean over valid pixels -------------------------------------------------------


def _validate_l1(samples: list[dict]) -> tuple[float, float]:
    """val/loss of an L1 depth model over `samples` (batches of 2), and the L1 over their valid pixels."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from tasks.common.data import stack_batch
    from tasks.depth.module import DepthModule

    torch.manual_seed(0)
    model = DepthModule(loss="l1", channels_last=False)
    loader = DataLoader(samples, batch_size=2, collate_fn=lambda b: stack_batch(b, ("image", "depth")))
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, loader, verbose=False)[0]["val/loss"]
    model.eval()
    errors, pixels = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            pred, depth = model(batch["image"]), batch["depth"]
            valid = (depth > 0) & (depth <= model.hparams.max_depth)
            errors += float((pred - depth).abs()[valid].sum())
            pixels += int(valid.sum())
    return logged, errors / pixels


def test_9_batches_without_valid_pixels_do_not_pull_the_loss_down_synthetic():
    from tasks.depth.datasets import SyntheticDepthScenes
    from tasks.depth.transforms import eval_transform

    scenes = SyntheticDepthScenes(4, 0, 48, 64, transform=eval_transform((48, 64)))
    samples = [dict(scenes[i]) for i in range(4)]
    for sample in samples[2:]:  # the second batch: a sensor that returned nothing
        sample["depth"] = torch.zeros_like(sample["depth"])
    logged, reference = _validate_l1(samples)
    assert logged == pytest.approx(reference, rel=1e-4)  # was half of it: (L + 0) / 2


def test_9_real_frames_with_an_empty_depth_map(tmp_path, shared_data):
    from tasks.depth.datasets import RGBDPairDataset
    from tasks.depth.datasets.rgbd_folder import folder_pairs
    from tasks.depth.transforms import eval_transform

    source = shared_data / SEVENSCENES
    if not source.is_dir():
        pytest.skip(f"7-Scenes sample not found under {shared_data}")
    pairs = folder_pairs(source)[:6]
    dataset = RGBDPairDataset(pairs, 1000.0, (0, 65535), eval_transform((48, 64)))
    samples = [dict(dataset[i]) for i in range(6)]
    samples[3]["depth"] = torch.zeros_like(samples[3]["depth"])  # a frame whose depth PNG is all 0
    samples[2]["depth"] = torch.zeros_like(samples[2]["depth"])
    logged, reference = _validate_l1(samples)
    assert logged == pytest.approx(reference, rel=1e-4)
