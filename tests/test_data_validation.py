"""Every kind of bad input gets one clear error naming the file (pipeline.data)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import make_imagefolder, png

from pipeline.data import DatasetError, read_dataset


def expect_error(root: Path, fmt: str, names: str, problem: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        read_dataset(root, fmt)
    msg = str(info.value)
    assert names in msg, msg
    assert problem in msg, msg
    assert "\n" not in msg
    return info.value


def test_valid_imagefolder_reads_every_image(imagefolder):
    raw = read_dataset(imagefolder)
    assert raw.classes == ["ants", "bees"]
    assert len(raw.samples) == 8
    assert {s.label for s in raw.samples} == {0, 1}
    assert all(len(s.sha256) == 64 and s.width == 16 for s in raw.samples)


def test_zero_byte_file(imagefolder):
    (imagefolder / "ants" / "empty.png").write_bytes(b"")
    expect_error(imagefolder, "imagefolder", "empty.png", "empty file")


def test_truncated_png(imagefolder):
    p = png(imagefolder / "ants" / "cut.png", size=64)
    p.write_bytes(p.read_bytes()[:200])
    expect_error(imagefolder, "imagefolder", "cut.png", "corrupt image")


def test_truncated_jpeg(imagefolder):
    from PIL import Image

    p = imagefolder / "bees" / "cut.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(p, quality=95)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    expect_error(imagefolder, "imagefolder", "cut.jpg", "corrupt image")


def test_text_file_named_jpg(imagefolder):
    (imagefolder / "bees" / "notes.jpg").write_text("this is not a picture")
    expect_error(imagefolder, "imagefolder", "notes.jpg", "not an image")


def test_unreadable_directory(imagefolder, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: make the listing itself fail.
    real_scandir = os.scandir
    locked = str(imagefolder / "bees")

    def scandir(path):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    expect_error(imagefolder, "imagefolder", "bees", "cannot read directory")


def test_empty_class_folder(imagefolder):
    (imagefolder / "wasps").mkdir()
    expect_error(imagefolder, "imagefolder", "wasps", "class folder has no images")


def test_one_class(tmp_path):
    root = make_imagefolder(tmp_path / "one", classes=("ants",))
    expect_error(root, "imagefolder", "one", "at least 2")


def test_file_name_not_utf8(imagefolder):
    bad = os.path.join(os.fsencode(imagefolder / "ants"), b"bad\xff.png")
    with open(bad, "wb") as f:
        f.write((imagefolder / "ants" / "ants_0.png").read_bytes())
    err = expect_error(imagefolder, "imagefolder", "bad\\udcff.png", "not valid UTF-8")
    assert err.path.endswith(".png")


def test_image_without_label(imagefolder):
    png(imagefolder / "loose.png")
    expect_error(imagefolder, "imagefolder", "loose.png", "no label")


def test_missing_data_path(tmp_path):
    expect_error(tmp_path / "nowhere", "imagefolder", "nowhere", "does not exist")


def test_unknown_format(imagefolder):
    expect_error(imagefolder, "yolo", "images", "unknown dataset format")


def test_skip_invalid_lists_each_dropped_file(imagefolder):
    (imagefolder / "ants" / "empty.png").write_bytes(b"")
    (imagefolder / "bees" / "notes.jpg").write_text("text")
    raw = read_dataset(imagefolder, skip_invalid=True)
    assert len(raw.samples) == 8
    assert sorted(Path(s["path"]).name for s in raw.skipped) == ["empty.png", "notes.jpg"]


# ---- COCO ----------------------------------------------------------------------------------------

def make_coco(root: Path, **edit) -> Path:
    (root / "images").mkdir(parents=True)
    png(root / "images" / "a.png", size=32)
    png(root / "images" / "b.png", seed=1, size=32)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                   {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
                        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32]}],
        "categories": [{"id": 1, "name": "raccoon"}, {"id": 2, "name": "cat"}],
    }
    for key, fn in edit.items():
        fn(coco) if callable(fn) else coco.__setitem__(key, fn)
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_valid_coco(tmp_path):
    raw = read_dataset(make_coco(tmp_path / "c"), "coco")
    assert raw.classes == ["raccoon", "cat"]
    assert [s.label for s in raw.samples] == [0, 1]
    assert raw.samples[0].boxes == [{"bbox": [2.0, 2.0, 10.0, 10.0], "category": 0}]


def test_coco_invalid_json(tmp_path):
    root = make_coco(tmp_path / "c")
    (root / "annotations.json").write_text('{"images": [}')
    expect_error(root, "coco", "annotations.json", "invalid JSON")


def test_coco_missing_images_key(tmp_path):
    root = make_coco(tmp_path / "c", drop=lambda c: c.pop("images"))
    expect_error(root, "coco", "annotations.json", "'images'")


def test_coco_annotation_for_missing_image(tmp_path):
    root = make_coco(tmp_path / "c", bad=lambda c: c["annotations"][0].__setitem__("image_id", 99))
    expect_error(root, "coco", "annotations.json", "unknown image id 99")


def test_coco_image_file_missing(tmp_path):
    root = make_coco(tmp_path / "c")
    (root / "images" / "b.png").unlink()
    expect_error(root, "coco", "b.png", "is missing")


def test_coco_unknown_category(tmp_path):
    root = make_coco(tmp_path / "c", bad=lambda c: c["annotations"][1].__setitem__("category_id", 7))
    expect_error(root, "coco", "annotations.json", "unknown category id 7")


def test_coco_box_outside_image(tmp_path):
    root = make_coco(tmp_path / "c", bad=lambda c: c["annotations"][0].__setitem__("bbox", [20, 20, 20, 5]))
    expect_error(root, "coco", "a.png", "outside the 32x32 image")


@pytest.mark.parametrize("box", [[1, 1, 0, 5], [1, 1, 5, -3]])
def test_coco_box_without_size(tmp_path, box):
    root = make_coco(tmp_path / "c", bad=lambda c: c["annotations"][0].__setitem__("bbox", box))
    expect_error(root, "coco", "a.png", "non-positive size")


def test_coco_nan_in_box(tmp_path):
    root = make_coco(tmp_path / "c", bad=lambda c: c["annotations"][0].__setitem__("bbox", [1, math.nan, 4, 4]))
    expect_error(root, "coco", "a.png", "non-finite")


def test_pre_split_imagefolder_takes_classes_one_level_down(tmp_path):
    root = tmp_path / "presplit"
    make_imagefolder(root / "train", per_class=3)
    make_imagefolder(root / "val", per_class=2)
    raw = read_dataset(root)
    assert raw.classes == ["ants", "bees"]
    assert len(raw.samples) == 10
    assert {s.path.split("/")[0] for s in raw.samples} == {"train", "val"}
