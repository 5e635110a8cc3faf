import json
import warnings

import numpy as np
import pytest
from PIL import Image

from tasks.common.images import CorruptImageError
from tasks.detection.datasets import CocoDetection, SyntheticDetectionShapes, VocDetection, collate
from tasks.detection.transforms import eval_transform, train_transform

XML = """<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = (
    "<object><name>{cls}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
    "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
)


def _voc(tmp_path, objects_per_image):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    names = []
    for i, objects in enumerate(objects_per_image):
        name = f"img{i}"
        names.append(name)
        Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        xml = XML.format(name=name, objects="".join(OBJ.format(cls=c, d=d, b=b) for c, d, b in objects))
        (tmp_path / "Annotations" / f"{name}.xml").write_text(xml)
    (tmp_path / "ImageSets/Main/train.txt").write_text("\n".join(names) + "\n")
    return tmp_path


def test_voc_difficult_zero_area_and_outside_boxes(tmp_path):
    root = _voc(
        tmp_path,
        [
            [
                ("cat", 0, (1, 2, 30, 40)),
                ("dog", 1, (10, 10, 20, 20)),
                ("cat", 0, (5, 5, 5, 9)),
                ("dog", 0, (50, 30, 90, 60)),
            ],
            [],
        ],
    )
    with pytest.warns(UserWarning, match=r"1 box\(es\) clipped.*img0.xml; 1 box\(es\) dropped for zero area.*img0.xml"):
        ds = VocDetection(root, "train", transform=eval_transform(32))
    assert ds.class_names == ["__background__", "cat", "dog"]
    rec = ds.records[0]
    assert rec.difficult.tolist() == [False, True, False]
    np.testing.assert_allclose(rec.boxes[2], [50, 30, 64, 48])
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["name"] == "img0" and item["size"] == (48, 64)
    assert item["labels"].tolist() == [1, 2]  # the difficult box is not a training target
    coco = ds.to_coco()
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1, 0]
    empty = ds[1]  # an image without boxes
    assert empty["boxes"].shape == (0, 4)


def test_voc_bad_inputs_name_the_file(tmp_path):
    root = _voc(tmp_path, [[("cat", 0, (1, 2, 30, 40))]])
    with pytest.raises(ValueError, match=r"img0.xml.*\['cat'\].*not in the class list"):
        VocDetection(root, "train", classes=["dog"])
    (root / "Annotations" / "img0.xml").write_text("<annotation><size>")
    with pytest.raises(ValueError, match="img0.xml"):
        VocDetection(root, "train", classes=["cat"])
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VocDetection(root, "val", classes=["cat"])


def test_corrupt_image_error_or_skip(tmp_path):
    root = _voc(tmp_path, [[("cat", 0, (1, 2, 30, 40))], [("cat", 0, (1, 2, 30, 40))]])
    (root / "JPEGImages" / "img1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(CorruptImageError, match="img1.jpg"):  # its size is read at setup (issue 14.3)
        VocDetection(root, "train", transform=eval_transform(32))
    ds = VocDetection(root, "train", transform=eval_transform(32), skip_corrupt=True)
    with pytest.warns(UserWarning, match="img1.jpg"):
        batch = collate([ds[0], ds[1]])
    assert batch["image"].shape[0] == 1 and len(batch["targets"]) == 1 and batch["name"] == ["img0"]


def test_coco_real_annotations_crowd_and_label_map(shared_data):
    root = shared_data / "detection" / "coco_mini"
    ann = root / "annotations" / "instances_val2017.json"
    ds = CocoDetection(root / "val2017", ann, transform=eval_transform(64))
    data = json.loads(ann.read_text())
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert crowd > 0
    assert sum(len(r.boxes) for r in ds.records) <= len(data["annotations"]) - crowd
    assert ds.num_classes == len(data["categories"]) + 1
    # Contiguous labels map back to the (non-contiguous) category ids.
    assert ds.category_ids[1:] == sorted(c["id"] for c in data["categories"])
    assert max(ds.category_ids) == 90
    ds91 = CocoDetection(root / "val2017", ann, contiguous_labels=False)
    assert ds91.num_classes == 91
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["size"] == (ds.records[0].height, ds.records[0].width)


def test_coco_unknown_category_is_a_clear_error(tmp_path, shared_data):
    data = json.loads((shared_data / "detection/coco_mini/annotations/instances_val2017.json").read_text())
    data["annotations"][3]["category_id"] = 999
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json.*category_id 999"):
        CocoDetection(tmp_path, path)


def test_bccd_zero_area_boxes_are_counted(shared_data):
    # The README's known quirk: the warning names both XML files (issue 14.3).
    with pytest.warns(
        UserWarning, match=r"2 box\(es\) dropped for zero area.*BloodImage_00338.xml.*BloodImage_00343.xml"
    ):
        VocDetection(shared_data / "detection/bccd/BCCD", "trainval")


def test_train_transform_keeps_boxes_valid():
    ds = SyntheticDetectionShapes(12, image_size=96, seed=3, transform=train_transform(64))
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64)
        boxes = item["boxes"]
        assert len(boxes) == len(item["labels"])
        if len(boxes):
            assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64


def test_synthetic_is_deterministic():
    a, b = SyntheticDetectionShapes(4, image_size=64, seed=1), SyntheticDetectionShapes(4, image_size=64, seed=1)
    with warnings.catch_warnings():
        np.testing.assert_array_equal(a.load_image(a.records[2]), b.load_image(b.records[2]))
