"""The dataset stage commits a version as one recoverable step: killed (SIGKILL) after any step of the commit,
the next stage sees the old version or the new one, whole, never a mix; the next dataset run finishes or
undoes the commit. A folder that does not hold the version its .dvc file records is a one-line error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import png

from pipeline.data import DatasetError
from pipeline.data.versioning import COMMIT_STEPS, aside, journal_path, read_version
from pipeline.params import load_params
from pipeline.stages.common import check_dataset, dataset_ref
from pipeline.stages.dataset import run_dataset
from pipeline.tracking import Tracker

CRASH_AT = """
import os, signal, sys
from pathlib import Path

import pipeline.data.versioning as versioning
from pipeline.params import load_params
from pipeline.stages.dataset import run_dataset
from pipeline.tracking import Tracker

root, data, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
versioning.on_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
params = load_params(root)
run_dataset(root, params, Tracker.from_params(params, root), data=data, fmt="imagefolder", skip_invalid=False)
"""


def stage(project, data):
    params = load_params(project)
    return run_dataset(project, params, Tracker.from_params(params, project), data=str(data), fmt="imagefolder",
                       skip_invalid=False)


def seen_by_the_next_stage(project) -> tuple[str, str]:
    """What a later stage reads: the version dataset_ref gives and the manifest in the folder."""
    ref = dataset_ref(project, load_params(project))
    check_dataset(ref, project)  # what the training stages call on the dict they get
    return ref["version"], (project / ref["tracked_dir"] / "manifest.json").read_text()


def two_versions(project, imagefolder, tmp_path):
    old = stage(project, imagefolder)
    new_data = tmp_path / "new"
    shutil.copytree(imagefolder, new_data)
    png(new_data / "bees" / "new.png", seed=99)
    return old, new_data


def leftovers(project) -> list[str]:
    target = project / "data" / "dataset"
    found = [p.name for p in (aside(target, "old"), aside(target, "staged")) if p.exists()]
    return found + (["journal"] if journal_path(target).exists() else [])


@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_killed_at_each_step_of_the_commit_the_next_stage_sees_one_whole_version(project, imagefolder, tmp_path,
                                                                               step):
    old, new_data = two_versions(project, imagefolder, tmp_path)
    old_seen = seen_by_the_next_stage(project)
    proc = subprocess.run([sys.executable, "-c", CRASH_AT, str(project), str(new_data), step], capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    seen = seen_by_the_next_stage(project)  # recovers first, under the commit lock

    new = stage(project, new_data)  # the next dataset run finishes or undoes the commit, then commits
    assert new.version != old.version
    new_seen = seen_by_the_next_stage(project)
    rolled_forward = COMMIT_STEPS.index(step) >= COMMIT_STEPS.index("added")  # dvc add had recorded it
    assert seen == (new_seen if rolled_forward else old_seen)
    assert leftovers(project) == []
    assert read_version(project / "data" / "dataset") == new.version
    pushed = project / ".dvc-storage" / "files" / "md5" / new.version[:2] / new.version[2:]
    assert pushed.is_file(), "the version was not pushed to the remote"


def test_ctrl_c_during_the_swap_rolls_back_at_once(project, imagefolder, tmp_path, monkeypatch):
    import pipeline.data.versioning as versioning

    old, new_data = two_versions(project, imagefolder, tmp_path)
    before = seen_by_the_next_stage(project)

    def interrupt(name):
        if name == "new_in":
            raise KeyboardInterrupt

    monkeypatch.setattr(versioning, "on_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        stage(project, new_data)
    assert leftovers(project) == []
    assert not journal_path(project / "data" / "dataset").exists()
    assert seen_by_the_next_stage(project) == before


def test_a_folder_that_is_not_the_recorded_version_is_a_one_line_error(project, imagefolder, tmp_path):
    """What the code before the journal left: the new files in data/dataset, the old .dvc, a half-deleted
    dataset.old beside it. No stage may trust it; the next dataset run cleans it up."""
    old, new_data = two_versions(project, imagefolder, tmp_path)
    target = project / "data" / "dataset"
    shutil.copytree(target, aside(target, "old"))
    (aside(target, "old") / "ants" / "ants_0.png").unlink()
    png(target / "bees" / "new.png", seed=99)
    with pytest.raises(DatasetError) as info:
        dataset_ref(project, load_params(project))
    msg = str(info.value)
    assert msg.startswith(f"{target}: does not hold the version dataset.dvc records ({old.version})"), msg
    assert "\n" not in msg and "modified" in msg
    with pytest.raises(DatasetError, match="does not hold the version"):
        check_dataset({"tracked_dir": str(target), "version": old.version})

    new = stage(project, new_data)
    assert leftovers(project) == []
    assert seen_by_the_next_stage(project)[0] == new.version


def test_a_stage_given_another_version_than_the_dvc_file_records_refuses(project, imagefolder, tmp_path):
    old, new_data = two_versions(project, imagefolder, tmp_path)
    stale = {"tracked_dir": str(project / "data" / "dataset"), "version": old.version}
    new = stage(project, new_data)  # a Dagster run still holding the old asset value
    with pytest.raises(DatasetError) as info:
        check_dataset(stale)
    assert str(info.value) == (f"{project / 'data' / 'dataset.dvc'}: records version {new.version}, but this run "
                               f"was given {old.version}: the dataset changed since; run the chain again from the "
                               "dataset stage")
