"""Splits depend on the relative path alone; duplicates stay together (pipeline.data.manifest)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from pipeline.data import build_manifest, read_dataset
from pipeline.data.manifest import split_of


def test_split_is_stable_under_shuffled_order(digits_dir):
    raw = read_dataset(digits_dir)
    first = build_manifest(raw, 0.1, 0.1)
    shuffled = list(raw.samples)
    random.Random(7).shuffle(shuffled)
    second = build_manifest(replace(raw, samples=shuffled), 0.1, 0.1)
    assert first.to_json() == second.to_json()
    counts = first.counts()
    assert sum(counts.values()) == 1797
    # Hash-based fractions land near the requested 10 % / 10 % on 1,797 files.
    assert 130 < counts["val"] < 230 and 130 < counts["test"] < 230


def test_split_of_is_a_pure_function_of_the_path():
    assert split_of("3/digit_0003.png", 0.1, 0.1) == split_of("3/digit_0003.png", 0.1, 0.1)
    splits = {split_of(f"c/{i}.png", 0.2, 0.2) for i in range(200)}
    assert splits == {"train", "val", "test"}


def test_duplicate_images_share_a_split(imagefolder):
    data = (imagefolder / "ants" / "ants_0.png").read_bytes()
    for i in range(40):
        (imagefolder / "bees" / f"dup_{i}.png").write_bytes(data)
    manifest = build_manifest(read_dataset(imagefolder), 0.3, 0.3)
    sha = [f for f in manifest.files if f["path"] == "ants/ants_0.png"][0]["sha256"]
    assert len({f["split"] for f in manifest.files if f["sha256"] == sha}) == 1


def test_manifest_histogram_and_counts(imagefolder):
    manifest = build_manifest(read_dataset(imagefolder), 0.0, 0.0)
    assert manifest.counts() == {"train": 8, "val": 0, "test": 0}
    assert manifest.class_histogram() == {"ants": {"train": 4, "val": 0, "test": 0},
                                          "bees": {"train": 4, "val": 0, "test": 0}}


def test_small_sets_get_a_val_split_big_enough_to_rank_on():
    from pipeline.stages.dataset import val_fraction

    p = {"val_fraction": 0.1, "min_val_images": 60, "max_val_fraction": 0.3}
    assert val_fraction(p, 1797) == 0.1  # the digits: 180 val images already
    assert val_fraction(p, 244) == pytest.approx(60 / 244)  # hymenoptera's train/: about 60 instead of 24
    assert val_fraction(p, 100) == 0.3  # capped: training keeps most of a tiny set
    assert val_fraction(p, 0) == 0.1


SPLIT_IN_A_PROCESS = """
import random, sys
from dataclasses import replace
from pipeline.data import build_manifest, read_dataset
raw = read_dataset(sys.argv[1])
samples = list(raw.samples)
random.Random(int(sys.argv[2])).shuffle(samples)  # another listing order too
print(build_manifest(replace(raw, samples=samples), 0.3, 0.3).to_json())
"""


def test_split_is_the_same_in_processes_with_other_hash_seeds(tmp_path):
    """str hashes (sets, dicts) change with PYTHONHASHSEED: the split and the duplicates' shared split must not."""
    import os
    import subprocess
    import sys

    from conftest import make_imagefolder

    root = make_imagefolder(tmp_path / "images", classes=("ants", "bees", "wasps"), per_class=12)
    data = (root / "ants" / "ants_0.png").read_bytes()
    for i in range(6):  # duplicates in every class: they must share one split in every process
        for name in ("bees", "wasps"):
            (root / name / f"dup_{i}.png").write_bytes(data)
    here = build_manifest(read_dataset(root), 0.3, 0.3)
    assert {f["split"] for f in here.files} == {"train", "val", "test"}
    outputs = []
    for seed in ("0", "1", "4242"):
        proc = subprocess.run([sys.executable, "-c", SPLIT_IN_A_PROCESS, str(root), seed], capture_output=True,
                              text=True, check=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.append(proc.stdout.strip())
    assert outputs == [here.to_json()] * 3
    sha = next(f["sha256"] for f in here.files if f["path"] == "ants/ants_0.png")
    assert len({f["split"] for f in here.files if f["sha256"] == sha}) == 1


def presplit(root, **per_split):
    from conftest import make_imagefolder

    for k, (split, n) in enumerate(per_split.items()):
        make_imagefolder(root / split, per_class=n, first_seed=1000 * k)  # other images in each folder
    return read_dataset(root)


def test_a_train_val_test_layout_keeps_its_split(tmp_path):
    raw = presplit(tmp_path / "set", train=20, val=4, test=3)
    manifest = build_manifest(raw, 0.3, 0.3)
    assert manifest.given_splits == ["train", "val", "test"]
    assert all(f["split"] == f["path"].split("/")[0] for f in manifest.files)  # nothing moved
    assert manifest.counts() == {"train": 40, "val": 8, "test": 6}


def test_a_train_val_layout_keeps_val_and_draws_test_from_train(tmp_path):
    raw = presplit(tmp_path / "set", train=30, valid=5)  # valid/: a val folder by another common name
    manifest = build_manifest(raw, 0.2, 0.25)
    assert manifest.given_splits == ["train", "val"]
    by_folder = {}
    for f in manifest.files:
        by_folder.setdefault(f["path"].split("/")[0], set()).add(f["split"])
    assert by_folder == {"valid": {"val"}, "train": {"train", "test"}}  # val as given; test drawn from train/
    assert 5 <= manifest.counts()["test"] <= 25


def test_resplit_merges_the_folders_and_splits_by_hash(tmp_path):
    raw = presplit(tmp_path / "set", train=30, val=10)
    manifest = build_manifest(raw, 0.2, 0.2, resplit=True)
    assert manifest.given_splits == []
    val_from_train = [f for f in manifest.files if f["path"].startswith("train/") and f["split"] == "val"]
    train_from_val = [f for f in manifest.files if f["path"].startswith("val/") and f["split"] == "train"]
    assert val_from_train and train_from_val


def test_a_train_copy_of_a_shipped_val_image_goes_to_val_not_into_training(tmp_path):
    import shutil

    root = tmp_path / "set"
    presplit(root, train=20, val=4)
    shutil.copy(root / "val" / "bees" / "bees_1.png", root / "train" / "bees" / "copy_of_val.png")
    manifest = build_manifest(read_dataset(root), 0.2, 0.2)
    split = {f["path"]: f["split"] for f in manifest.files}
    assert split["train/bees/copy_of_val.png"] == "val"
    assert all(split[p] == "val" for p in split if p.startswith("val/"))  # the shipped split, kept
    by_sha = {}
    for f in manifest.files:
        by_sha.setdefault(f["sha256"], set()).add(f["split"])
    assert all(len(s) == 1 for s in by_sha.values())  # no image on two sides


def test_a_class_with_no_training_images_is_refused_unless_resplit(tmp_path):
    from conftest import make_imagefolder

    from pipeline.data.errors import DatasetError

    root = tmp_path / "set"
    make_imagefolder(root / "train", classes=("ants", "bees"), per_class=6)
    make_imagefolder(root / "val", classes=("ants", "bees", "wasps"), per_class=3, first_seed=5000)
    raw = read_dataset(root)
    with pytest.raises(DatasetError, match="no training images of class wasps") as err:
        build_manifest(raw, 0.2, 0.2)
    assert str(root / "train") in str(err.value) and "--resplit" in str(err.value)
    assert build_manifest(raw, 0.2, 0.2, resplit=True).counts()["train"] > 0


def test_a_pre_split_layout_needs_a_train_folder(tmp_path):
    from pipeline.data.errors import DatasetError

    with pytest.raises(DatasetError, match="without a train/ folder"):
        presplit(tmp_path / "set", val=3, test=3)
