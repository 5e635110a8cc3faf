from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.segmentation.datamodule import SegmentationDataModule, pad_collate
from tasks.segmentation.datasets import FORMATS, IGNORE_INDEX, Sample, SegmentationDataset
from tasks.segmentation.transforms import eval_transform, train_transform


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_camvid_sample_lists_and_ignores_unlabelled(shared_data):
    root = shared_data / "segmentation" / "camvid"
    assert len(FORMATS["camvid"][0](root, "train")) == 123
    samples = FORMATS["camvid"][0](root, "val")
    assert len(samples) == 34
    dataset = SegmentationDataset(samples[:2], 11, FORMATS["camvid"][1].lut, eval_transform())
    item = dataset[0]
    raw = np.asarray(Image.open(samples[0].mask)).astype(np.int64)
    assert item["image"].shape == (3, 360, 480)
    mask = item["mask"].numpy()
    assert (mask[raw == 11] == IGNORE_INDEX).all() and (mask[raw < 11] == raw[raw < 11]).all()


def test_camvid_segnet_absolute_paths(tmp_path):
    _png(tmp_path / "train" / "a.png", _rgb())
    _png(tmp_path / "trainannot" / "a.png", np.zeros((12, 16), np.uint8))
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    (sample,) = FORMATS["camvid"][0](tmp_path, "train")
    assert sample.image == tmp_path / "train" / "a.png"


def test_missing_file_from_list_names_list_and_file(tmp_path):
    _png(tmp_path / "train" / "a.png", _rgb())
    (tmp_path / "train.txt").write_text("train/a.png trainannot/a.png\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt lists .*trainannot/a\.png"):
        FORMATS["camvid"][0](tmp_path, "train")


def test_size_mismatch_names_both_files(tmp_path):
    image = _png(tmp_path / "a.png", _rgb(12, 16))
    mask = _png(tmp_path / "a_mask.png", np.zeros((10, 16), np.uint8))
    dataset = SegmentationDataset([Sample(image, mask)], 3, None, eval_transform())
    with pytest.raises(ValueError, match=r"a_mask\.png is 16x10 .*/a\.png is 16x12"):
        dataset[0]


def test_label_values_outside_classes_name_the_file(tmp_path):
    image = _png(tmp_path / "a.png", _rgb())
    labels = np.zeros((12, 16), np.uint8)
    labels[0, :3] = [7, 255, 3]
    mask = _png(tmp_path / "bad_mask.png", labels)
    dataset = SegmentationDataset([Sample(image, mask)], 3, None, eval_transform())
    with pytest.raises(ValueError, match=r"bad_mask\.png holds label values \[3, 7\]"):
        dataset[0]


@pytest.mark.parametrize(
    "array,mode",
    [
        (np.full((12, 16), 90, np.uint8), "L"),
        (np.full((12, 16, 4), 90, np.uint8), "RGBA"),
        (np.full((12, 16), 40000, np.uint16), None),  # PIL stores uint16 as I;16
    ],
    ids=["gray", "rgba", "16bit"],
)
def test_grayscale_rgba_16bit_images_become_rgb(tmp_path, array, mode):
    image = _png(tmp_path / "img.png", array, mode)
    mask = _png(tmp_path / "mask.png", np.ones((12, 16), np.uint8))
    item = SegmentationDataset([Sample(image, mask)], 2, None, eval_transform())[0]
    assert item["image"].shape == (3, 12, 16) and torch.isfinite(item["image"]).all()
    assert (item["mask"] == 1).all()


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    labels = np.array([[7, 8, 26, 33], [0, 1, 6, 30]], np.uint8)
    _png(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_01_leftImg8bit.png", _rgb(2, 4))
    _png(tmp_path / "gtFine" / "val" / "ulm" / "ulm_01_gtFine_labelIds.png", labels)
    samples = FORMATS["cityscapes"][0](tmp_path, "val")
    item = SegmentationDataset(samples, 19, FORMATS["cityscapes"][1].lut, eval_transform())[0]
    assert item["mask"].tolist() == [[0, 1, 13, 18], [255, 255, 255, 255]]


def test_ade20k_shifts_labels_and_ignores_other(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    Image.fromarray(_rgb(2, 3)).save(_png(root / "images" / "training" / "x.png", _rgb(2, 3)).with_suffix(".jpg"))
    _png(root / "annotations" / "training" / "x.png", np.array([[0, 1, 150], [2, 0, 0]], np.uint8))
    samples = FORMATS["ade20k"][0](tmp_path, "train")
    item = SegmentationDataset(samples, 150, FORMATS["ade20k"][1].lut, eval_transform())[0]
    assert item["mask"].tolist() == [[255, 0, 149], [1, 255, 255]]


def test_voc_uses_sbd_train_aug_when_present(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\n")
    (lists / "train_aug.txt").write_text("a\nb\n")
    for name in "ab":
        Image.fromarray(_rgb()).save(_png(voc / "JPEGImages" / f"{name}.png", _rgb()).with_suffix(".jpg"))
        _png(voc / "SegmentationClassAug" / f"{name}.png", np.zeros((12, 16), np.uint8))
    _png(voc / "SegmentationClass" / "a.png", np.zeros((12, 16), np.uint8))
    assert len(FORMATS["voc"][0](tmp_path, "train")) == 2
    assert len(FORMATS["voc"][0](tmp_path, "train", use_sbd=False)) == 1


def test_folder_dataset_and_missing_mask(tmp_path):
    _png(tmp_path / "images" / "a.png", _rgb())
    _png(tmp_path / "masks" / "a.png", np.full((12, 16), 2, np.uint8))
    dm = SegmentationDataModule("folder", str(tmp_path), class_names=["x", "y", "z"], eval_batch_size=1)
    dm.setup("validate")
    assert dm.num_classes == 3 and (next(iter(dm.val_dataloader()))["mask"] == 2).all()
    _png(tmp_path / "images" / "b.png", _rgb())
    with pytest.raises(FileNotFoundError, match=r"masks/b\.png"):
        SegmentationDataModule("folder", str(tmp_path), class_names=["x", "y", "z"]).setup("validate")
    with pytest.raises(ValueError, match="class_names"):
        SegmentationDataModule("folder", str(tmp_path))


def test_training_crop_pads_with_ignore():
    transform = train_transform((20, 24), scale_range=(1.0, 1.0), photometric=False)
    out = transform(image=_rgb(12, 16), mask=np.ones((12, 16), np.uint8))
    assert out["image"].shape == (3, 20, 24)
    mask = np.asarray(out["mask"])
    assert (mask == 1).sum() == 12 * 16 and (mask == IGNORE_INDEX).sum() == 20 * 24 - 12 * 16


def test_pad_collate_mixes_sizes():
    batch = [
        {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.int64), "name": "a", "path": "a.jpg",
         "size": (8, 10)},
        {"image": torch.ones(3, 6, 3), "mask": torch.zeros(6, 3, dtype=torch.int64), "name": "b", "path": "b.jpg",
         "size": (6, 3)},
    ]  # fmt: skip
    out = pad_collate(batch)
    assert out["image"].shape == (2, 3, 6, 5) and out["input_size"] == [(4, 5), (6, 3)]
    assert out["size"] == [(8, 10), (6, 3)] and out["name"] == ["a", "b"]
    assert (out["mask"][0, 4:] == IGNORE_INDEX).all() and (out["mask"][1, :, 3:] == IGNORE_INDEX).all()
    assert (out["image"][0, :, 4:] == 0).all()


def test_synthetic_default_is_deterministic_and_offline():
    dm = SegmentationDataModule(synthetic_train_size=4, synthetic_val_size=2, synthetic_size=32)
    dm.setup("fit")
    a, b = dm.datasets["val"][1], dm.datasets["val"][1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert set(a["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert dm.num_classes == 4
