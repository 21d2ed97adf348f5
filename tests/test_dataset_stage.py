"""The dataset stage end to end: DVC version, restore, MLflow run, CLI, bad input leaves history intact."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import png

import mlflow
from pipeline.data import DatasetError, load_manifest
from pipeline.data.versioning import checkout, read_version
from pipeline.params import load_params
from pipeline.stages.dataset import run_dataset
from pipeline.tracking import Tracker


def stage(project, data, **kw):
    params = load_params(project)
    return run_dataset(project, params, Tracker.from_params(params, project), data=str(data),
                       fmt=kw.pop("fmt", "imagefolder"), skip_invalid=kw.pop("skip_invalid", False))


def runs(project):
    tracker = Tracker.from_params(load_params(project), project)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    return mlflow.search_runs(experiment_names=[tracker.experiment], output_format="list")


def test_version_is_recorded_pushed_and_stable(project, imagefolder):
    first = stage(project, imagefolder)
    assert first.version.endswith(".dir")
    assert read_version(project / "data" / "dataset") == first.version
    # 8 images: val_fraction is raised to max_val_fraction 0.3 (small set), test_fraction 0.1; the split is a
    # fixed function of each relative path, so these are the exact files of each split on any machine
    assert first.counts == {"train": 3, "val": 5, "test": 0}
    manifest = load_manifest(project / "data" / "dataset")
    assert {f["path"]: f["split"] for f in manifest.files} == {
        "ants/ants_0.png": "val", "ants/ants_1.png": "train", "ants/ants_2.png": "val", "ants/ants_3.png": "val",
        "bees/bees_0.png": "train", "bees/bees_1.png": "train", "bees/bees_2.png": "val", "bees/bees_3.png": "val"}
    remote_files = sorted(p for p in (project / ".dvc-storage").rglob("*") if p.is_file())
    assert remote_files, "dvc push sent nothing to the local remote"

    second = stage(project, imagefolder)
    assert second.version == first.version
    assert sorted(p for p in (project / ".dvc-storage").rglob("*") if p.is_file()) == remote_files

    run = mlflow.get_run(first.mlflow_run_id)
    assert run.data.tags["dataset_version"] == first.version
    assert run.data.metrics["images"] == 8
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first.mlflow_run_id)}
    assert {"class_histogram.png", "manifest.json", "class_histogram.json"} <= artifacts


def test_data_restorable_with_dvc_checkout(project, imagefolder):
    res = stage(project, imagefolder)
    tracked = project / "data" / "dataset"
    before = sorted(p.relative_to(tracked) for p in tracked.rglob("*") if p.is_file())
    shutil.rmtree(tracked)
    checkout(project, tracked)
    assert sorted(p.relative_to(tracked) for p in tracked.rglob("*") if p.is_file()) == before
    assert read_version(tracked) == res.version


def test_new_data_gives_a_new_version(project, imagefolder):
    v1 = stage(project, imagefolder).version
    png(imagefolder / "bees" / "new.png", seed=99)
    assert stage(project, imagefolder).version != v1


def test_bad_input_leaves_version_and_runs_intact(project, imagefolder, tmp_path):
    good = stage(project, imagefolder)
    dvc_file = (project / "data" / "dataset.dvc").read_text()
    n_runs = len(runs(project))

    bad = tmp_path / "bad"
    shutil.copytree(imagefolder, bad)
    (bad / "ants" / "zero.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="zero.png"):
        stage(project, bad)
    assert (project / "data" / "dataset.dvc").read_text() == dvc_file
    assert len(runs(project)) == n_runs
    assert len(list((project / "data" / "dataset").rglob("*.png"))) == 8
    assert read_version(project / "data" / "dataset") == good.version


def test_skip_invalid_records_dropped_files_in_manifest(project, imagefolder):
    (imagefolder / "ants" / "zero.png").write_bytes(b"")
    res = stage(project, imagefolder, skip_invalid=True)
    assert res.num_images == 8
    assert res.skipped == [{"path": "ants/zero.png", "error": "empty file (0 bytes)"}]
    assert mlflow.get_run(res.mlflow_run_id).data.metrics["skipped"] == 1


def test_cli_bad_input_is_one_line_and_exit_2(project, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(project), "stage", "dataset",
                           "--data", str(tmp_path / "missing")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing'}: data path does not exist"
    assert "Traceback" not in proc.stderr


def test_cli_prints_version_and_counts(project, digits_few):
    cmd = [sys.executable, "-m", "pipeline.cli", "--root", str(project), "stage", "dataset", "--data", str(digits_few)]
    out1 = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    out2 = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "400 images, 10 classes" in out1
    assert out1.splitlines()[0] == out2.splitlines()[0]
    assert out1.splitlines()[0].startswith("dataset version ")


def test_stage_in_a_git_checkout_with_the_repos_gitignore(project, imagefolder):
    """As in a clone of the repo: .dvc files must not be git-ignored, data must be."""
    from pipeline.params import PACKAGE_ROOT

    subprocess.run(["git", "init", "-q", str(project)], check=True)
    shutil.copy(PACKAGE_ROOT / ".gitignore", project / ".gitignore")
    res = stage(project, imagefolder)
    assert res.version.endswith(".dir")
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/dataset.dvc"], cwd=project, check=False)
    assert ignored.returncode == 1  # not ignored: it is what a user commits
    assert subprocess.run(["git", "check-ignore", "-q", "data/dataset/ants/ants_0.png"], cwd=project,
                          check=False).returncode == 0
