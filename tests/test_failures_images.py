"""Images that lie about themselves: a size other than the COCO record says, too many pixels (a decompression
bomb), a truncated file that opens but does not decode whole. Each is one DatasetError naming the file (exit 2
at the CLI) and nothing is versioned; ``--skip-invalid`` skips them as it does other bad files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import png, set_params
from PIL import Image

from pipeline.data import DatasetError, read_dataset
from pipeline.errors import InputError


def one_line_error(root: Path, names: str, problem: str, **kw) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        read_dataset(root, kw.pop("fmt", "imagefolder"), **kw)
    msg = str(info.value)
    assert names in msg and problem in msg and "\n" not in msg, msg
    assert isinstance(info.value, InputError)  # the CLI's one line and exit 2
    return info.value


def coco(root: Path, declared: tuple[int, int] = (32, 32)) -> Path:
    (root / "images").mkdir(parents=True)
    png(root / "images" / "a.png", size=32)
    png(root / "images" / "b.png", seed=1, size=32)
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": declared[0], "height": declared[1]},
                   {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
                        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32]}],
        "categories": [{"id": 1, "name": "raccoon"}, {"id": 2, "name": "cat"}]}))
    return root


def test_a_size_other_than_the_coco_record_declares(tmp_path):
    root = coco(tmp_path / "c", declared=(640, 480))
    one_line_error(root, "a.png", "declares 640x480", fmt="coco")
    raw = read_dataset(root, "coco", skip_invalid=True)
    assert [s.path for s in raw.samples] == ["images/b.png"]
    assert [Path(s["path"]).name for s in raw.skipped] == ["a.png"]
    assert "declares 640x480" in raw.skipped[0]["error"] and "32x32" in raw.skipped[0]["error"]


def test_more_pixels_than_max_pixels(imagefolder):
    png(imagefolder / "bees" / "huge.png", size=40)  # 1,600 pixels; the others have 256
    one_line_error(imagefolder, "huge.png", "1600 pixels", max_pixels=1000)
    raw = read_dataset(imagefolder, skip_invalid=True, max_pixels=1000)
    assert len(raw.samples) == 8 and [Path(s["path"]).name for s in raw.skipped] == ["huge.png"]


# huge.png has 1,600 pixels: over twice PIL's limit of 700 (PIL raises its error), or over its limit of 1,000
# (PIL only warns). The other images have 256.
@pytest.mark.parametrize("pil_limit", [700, 1000])
def test_pils_own_decompression_bomb_checks_are_dataset_errors(imagefolder, monkeypatch, pil_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    png(imagefolder / "bees" / "huge.png", size=40)
    one_line_error(imagefolder, "huge.png", "decompression bomb", max_pixels=10_000)
    raw = read_dataset(imagefolder, skip_invalid=True, max_pixels=10_000)
    assert len(raw.samples) == 8 and [Path(s["path"]).name for s in raw.skipped] == ["huge.png"]


def _truncated_gif(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])  # the first frames decode; the last is cut off
    return path


def _cut(path: Path, n: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n])
    return path


@pytest.mark.parametrize("make", [
    pytest.param(lambda d: _cut(png(d / "ants" / "cut.png", size=64), 12), id="png-without-IEND"),
    pytest.param(lambda d: _cut(png(d / "ants" / "cut.png", size=64), 16), id="png-cut-in-the-last-checksum"),
    pytest.param(lambda d: _cut(png(d / "ants" / "cut.png", size=64), 2), id="png-cut-in-the-IEND-checksum"),
    pytest.param(lambda d: _truncated_gif(d / "ants" / "cut.gif"), id="gif-frames-cut-off"),
    pytest.param(lambda d: _cut(_jpeg(d / "ants" / "cut.jpg"), 2), id="jpeg-without-its-end-marker"),
])
def test_truncated_files_that_open_and_decode_in_part(imagefolder, make):
    path = make(imagefolder)
    with Image.open(path) as img:  # Pillow opens each and decodes its first frame without complaint
        img.load()
    one_line_error(imagefolder, path.name, "truncated")
    raw = read_dataset(imagefolder, skip_invalid=True)
    assert len(raw.samples) == 8 and [Path(s["path"]).name for s in raw.skipped] == [path.name]


def _jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)  # a JPEG whose scan data Pillow decodes whole without its last 2 bytes (EOI)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_whole_files_of_every_format_still_pass(imagefolder):
    rng = np.random.default_rng(5)
    frames = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(imagefolder / "ants" / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(imagefolder / "ants" / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(imagefolder / "bees" / "p.jpg", quality=90, progressive=True)
    frames[0].save(imagefolder / "bees" / "x.jpg", quality=90, exif=Image.Exif())
    frames[0].save(imagefolder / "bees" / "w.webp")
    raw = read_dataset(imagefolder, max_pixels=16 * 16 * 3)  # three frames of 256 pixels each are allowed
    assert len(raw.samples) == 13 and raw.skipped == []


def test_the_stage_reads_max_pixels_from_params_and_versions_nothing(project, imagefolder):
    from pipeline.params import load_params
    from pipeline.stages.dataset import run_dataset
    from pipeline.tracking import Tracker

    params = set_params(project, dataset__max_pixels=100)
    with pytest.raises(DatasetError, match="ants_0.png.*256 pixels"):
        run_dataset(project, params, Tracker.from_params(params, project), data=str(imagefolder), fmt="imagefolder",
                    skip_invalid=False)
    assert not (project / "data" / "dataset.dvc").exists() and not (project / "data" / "dataset").exists()
    assert load_params(project)["dataset"]["max_pixels"] == 100


def test_cli_lying_coco_is_one_line_exit_2_and_nothing_versioned(project, tmp_path):
    root = coco(tmp_path / "c", declared=(31, 32))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(project), "stage", "dataset",
                           "--data", str(root), "--format", "coco"], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {root / 'images' / 'a.png'}: annotations.json "
                                                    "declares 31x32 for image id 1, the file is 32x32")
    assert not (project / "data" / "dataset.dvc").exists()
