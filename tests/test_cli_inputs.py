"""What a newcomer types: a mistyped root, a relative --data, COCO sets the classifier cannot use or must explain."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_imagefolder

import mlflow
from pipeline.cli import main
from pipeline.params import load_params
from pipeline.tracking import Tracker


def test_a_root_without_params_yaml_is_refused_and_left_untouched(tmp_path, capsys):
    typo = tmp_path / "projcet"
    for argv in (["targets", "list"], ["stage", "dataset", "--data", str(tmp_path)], ["stage", "pretrain"]):
        assert main(["--root", str(typo), *argv]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {typo}: no params.yaml, so not a vitforge project root (check --root or " \
                      "$VITFORGE_ROOT)\n"
    assert not typo.exists()  # no DVC repo, no MLflow store grew there


def test_data_on_the_command_line_is_taken_from_the_current_directory(project, tmp_path, monkeypatch, capsys):
    make_imagefolder(tmp_path / "here" / "shots")
    monkeypatch.chdir(tmp_path / "here")  # not the project root
    assert main(["--root", str(project), "stage", "dataset", "--data", "shots"]) == 0
    assert "8 images, 2 classes" in capsys.readouterr().out


def coco(root: Path, labels: list[int | None], classes: int = 3) -> Path:
    """A COCO set of 16 px images; ``None``: an image without a box."""
    from conftest import png

    images, anns = [], []
    for i, label in enumerate(labels):
        png(root / "images" / f"im{i}.png", seed=i)
        images.append({"id": i, "file_name": f"im{i}.png", "width": 16, "height": 16})
        if label is not None:
            anns.append({"id": 100 + i, "image_id": i, "category_id": label + 1, "bbox": [1, 1, 10, 10]})
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_a_one_class_coco_set_is_refused_as_an_imagefolder_one_is(project, tmp_path, capsys):
    data = coco(tmp_path / "one", [0] * 12)
    assert main(["--root", str(project), "stage", "dataset", "--data", str(data), "--format", "coco"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data / 'annotations.json'}: the images' largest boxes name 1 class(es) (c0)")
    assert not (project / "data" / "dataset").exists()


def test_the_coco_rule_and_the_images_without_a_box_are_told_and_recorded(project, tmp_path, capsys):
    data = coco(tmp_path / "set", [0, 1, 2, None, 0, 1, 2, None, 0, 1, 2, 0])
    assert main(["--root", str(project), "stage", "dataset", "--data", str(data), "--format", "coco"]) == 0
    out = capsys.readouterr().out
    assert ("COCO to classes: an image's label is the category of its largest box; 2 image(s) without a box are "
            "versioned but not trained or tested on") in out
    run_id = out.split("MLflow run ")[1].split()[0]
    mlflow.set_tracking_uri(Tracker.from_params(load_params(project), project).tracking_uri)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["images_without_box"] == 2
    assert run.data.tags["coco_label_rule"] == "an image's label is the category of its largest box"


def test_the_output_holds_vitforges_lines_only(project, tmp_path):
    """A first stage in a new project: no MLflow INFO lines (store creation) nor artifact progress bars; -v
    brings MLflow's INFO lines back."""
    import subprocess
    import sys

    make_imagefolder(tmp_path / "shots")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(project), "stage", "dataset", "--data",
                          str(tmp_path / "shots")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "8 images, 2 classes" in run.stdout
    assert run.stderr == "", run.stderr  # was: "INFO mlflow.store.db.utils: Creating initial MLflow database tables"
    from conftest import make_project

    other = make_project(tmp_path / "other")  # a new store again, with -v
    verbose = subprocess.run([sys.executable, "-m", "pipeline.cli", "-v", "--root", str(other), "stage", "dataset",
                              "--data", str(tmp_path / "shots")], capture_output=True, text=True, env=env, timeout=300)
    assert verbose.returncode == 0 and "Creating initial MLflow database tables" in verbose.stderr, verbose.stderr


def test_a_closed_pipe_stops_the_command_quietly(project, tmp_path):
    """`vitforge ... | head`: the reader is gone before the first line; exit 141 as on SIGPIPE, no traceback."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--root", str(project), "demo-data",
                             str(tmp_path / "digits")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()  # before the command imports, let alone prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_outside_any_project_the_checkout_is_named_as_the_root(tmp_path):
    """From a folder with no project around it, an editable install works in its checkout: said, not silent."""
    import os
    import subprocess
    import sys

    from pipeline.params import PACKAGE_ROOT

    env = {k: v for k, v in os.environ.items() if k != "VITFORGE_ROOT"}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "stage", "search", "--target", "nosuch"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)  # read-only: an unknown target
    assert run.returncode == 2, run.stderr
    note, error = run.stderr.splitlines()
    assert note.startswith(f"note: no vitforge project around {tmp_path}; working in the checkout {PACKAGE_ROOT} ")
    assert error.startswith("error: ") and "nosuch" in error
