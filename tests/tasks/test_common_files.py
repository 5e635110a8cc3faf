"""Atomic writes: a failure leaves the previous file (or nothing), never half a file."""

import json

import pytest
from PIL import Image

from tasks.common.files import atomic_path, save_png_atomic, write_json_atomic


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "result.json"
    write_json_atomic(target, {"AP": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"AP": ')  # interrupted half-way
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"AP": 0.5}
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_save_png_atomic_round_trips(tmp_path):
    image = Image.new("L", (5, 3), color=7)
    save_png_atomic(image, tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").getpixel((4, 2)) == 7
