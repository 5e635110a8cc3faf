import random

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from tasks.depth.datamodule import DepthDataModule
from tasks.depth.datasets import (
    NYULabeledDataset,
    RGBDPairDataset,
    folder_pairs,
    kitti_dataset,
    list_pairs,
    nyu_png_dataset,
    render_scene,
)
from tasks.depth.transforms import train_transform


def _write_pair(folder, stem, depth_mm, size=(24, 20), color_ext=".color.jpg", depth_ext=".depth.png"):
    h, w = depth_mm.shape
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(folder / f"{stem}{color_ext}")
    Image.fromarray(depth_mm.astype(np.uint16)).save(folder / f"{stem}{depth_ext}")


def _depth_mm(h=20, w=24):
    d = np.full((h, w), 1500, np.uint16)
    d[0, 0], d[0, 1] = 0, 65535  # 7-Scenes' two invalid marks
    return d


def test_rgbd_folder_reads_millimetres_and_masks_invalid(tmp_path):
    for i in range(3):
        _write_pair(tmp_path, f"frame-{i:06d}", _depth_mm())
    pairs = folder_pairs(tmp_path, start=1)
    assert [p[0].name for p in pairs] == ["frame-000001.color.jpg", "frame-000002.color.jpg"]
    sample = RGBDPairDataset(pairs, 1000.0, (0, 65535))[0]
    assert sample["image"].shape == (20, 24, 3) and sample["image"].dtype == np.uint8
    assert sample["depth"][0, 0] == 0 and sample["depth"][0, 1] == 0
    assert sample["depth"][5, 5] == pytest.approx(1.5)


def test_eight_bit_depth_png_is_rejected_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.color.jpg")
    Image.fromarray(np.full((20, 24), 9, np.uint8)).save(tmp_path / "a.depth.png")
    with pytest.raises(ValueError, match=r"a\.depth\.png.*not a 16-bit"):
        RGBDPairDataset(folder_pairs(tmp_path))[0]


def test_size_mismatch_names_both_files(tmp_path):
    _write_pair(tmp_path, "a", _depth_mm(), size=(32, 20))
    with pytest.raises(ValueError, match=r"a\.color\.jpg is 32x20 but depth .*a\.depth\.png is 24x20"):
        RGBDPairDataset(folder_pairs(tmp_path))[0]


def test_missing_depth_and_missing_split_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.color.jpg")
    with pytest.raises(FileNotFoundError, match=r"b\.depth\.png"):
        folder_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"split list file not found: .*eigen_test\.txt"):
        list_pairs(tmp_path / "eigen_test.txt")


def test_kitti_list_divides_by_256_and_skips_frames_without_ground_truth(tmp_path):
    raw, gt = tmp_path / "raw" / "drive", tmp_path / "gt" / "drive"
    raw.mkdir(parents=True)
    gt.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(raw / f"{i}.png")
        Image.fromarray(np.full((8, 10), 256 * 20, np.uint16)).save(gt / f"{i}.png")
    split = tmp_path / "eigen.txt"
    split.write_text("drive/0.png drive/0.png 721.5377\ndrive/1.png None 721.5377\n")
    dataset = kitti_dataset(split, tmp_path / "raw", tmp_path / "gt")
    assert len(dataset) == 1 and dataset[0]["depth"][3, 3] == pytest.approx(20.0)
    split.write_text("drive/0.png drive/7.png 721.5377\n")
    with pytest.raises(FileNotFoundError, match=r"eigen\.txt:1 names a missing file: .*drive/7\.png"):
        kitti_dataset(split, tmp_path / "raw", tmp_path / "gt")


def test_nyu_png_list_in_millimetres(tmp_path):
    (tmp_path / "kitchen").mkdir()
    _write_pair(tmp_path / "kitchen", "rgb_00001", _depth_mm(), color_ext=".jpg", depth_ext="_d.png")
    (tmp_path / "train.txt").write_text("/kitchen/rgb_00001.jpg /kitchen/rgb_00001_d.png 518.8579\n")
    assert nyu_png_dataset(tmp_path / "train.txt", tmp_path)[0]["depth"][4, 4] == pytest.approx(1.5)


def test_nyu_labeled_mat_with_official_split(tmp_path):
    # MATLAB stores (N, 3, W, H) images and (N, W, H) depths; splits.mat indices are 1-based.
    h, w, n = 6, 8, 4
    images = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    depths = np.random.default_rng(1).uniform(0.5, 9, (n, h, w)).astype(np.float32)
    with h5py.File(tmp_path / "nyu.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2], [4]])})
    train = NYULabeledDataset(tmp_path / "nyu.mat", tmp_path / "splits.mat", "train")
    test = NYULabeledDataset(tmp_path / "nyu.mat", tmp_path / "splits.mat", "test")
    assert len(train) == 2 and len(test) == 2
    np.testing.assert_array_equal(train[1]["image"], images[2])
    np.testing.assert_allclose(test[0]["depth"], depths[1])
    with pytest.raises(FileNotFoundError, match=r"NYU split file not found: .*nosplits\.mat"):
        NYULabeledDataset(tmp_path / "nyu.mat", tmp_path / "nosplits.mat")


def test_transform_scale_augmentation_keeps_depth_consistent():
    random.seed(3)
    depth = np.full((60, 80), 2.0, np.float32)
    depth[:10] = 0.0  # invalid rows must stay exactly 0 (nearest resampling)
    depth[10, :5] = np.nan
    image = np.zeros((60, 80, 3), np.uint8)
    for _ in range(5):
        out = train_transform((30, 40), max_scale=1.25)(image=image, depth=depth)
        assert out["image"].shape == (3, 30, 40) and out["depth"].shape == (1, 30, 40)
        values = set(np.unique(out["depth"].numpy()).tolist())
        assert values <= {0.0} | {v for v in values if 1.6 - 1e-6 <= v <= 2.0}
        assert len(values - {0.0}) == 1  # zoom s divides every depth by the same s


def test_synthetic_scenes_are_deterministic_exact_and_in_range():
    a_image, a_depth = render_scene(7, 48, 64)
    b_image, b_depth = render_scene(7, 48, 64)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_depth, b_depth)
    assert np.isfinite(a_depth).all() and 0.2 < a_depth.min() and a_depth.max() < 10.0
    assert not np.array_equal(render_scene(8, 48, 64)[1], a_depth)


def test_datamodule_folder_ranges(tmp_path):
    for i in range(5):
        _write_pair(tmp_path, f"frame-{i:06d}", _depth_mm())
    dm = DepthDataModule("rgbd_folder", root=str(tmp_path), train_range=(0, 3), image_size=(16, 16), batch_size=2)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["depth"].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="none is left to validate"):
        DepthDataModule("rgbd_folder", root=str(tmp_path)).setup("fit")
    with pytest.raises(ValueError, match="needs --data.root"):
        DepthDataModule("kitti")
