"""`vitforge init`: a new project that the commands work in; a pre-split folder keeps its split there, and the
registered model takes the dataset's name."""

from __future__ import annotations

import yaml
from conftest import make_imagefolder

from pipeline.cli import main
from pipeline.params import PACKAGE_ROOT, load_params, project_root
from pipeline.stages.common import model_name


def test_init_makes_a_project_the_commands_work_in(tmp_path, monkeypatch, capsys):
    proj = tmp_path / "new"
    assert main(["init", str(proj)]) == 0
    out = capsys.readouterr().out
    assert "a new vitforge project in" in out
    assert (proj / "params.yaml").read_text() == (PACKAGE_ROOT / "params.yaml").read_text()
    assert yaml.safe_load((proj / "infra" / "targets" / "cpu-ort-fp32.yaml").read_text())["runtime"] == "onnxruntime"
    assert (proj / "infra" / "fleets").is_dir() and (proj / ".git").is_dir()
    assert "/runs/" in (proj / ".gitignore").read_text().splitlines()
    config = (proj / ".dvc" / "config").read_text()
    assert "remote = local" in config and "../.dvc-storage" in config

    # the project around the current directory is the root, without --root
    monkeypatch.delenv("VITFORGE_ROOT", raising=False)
    monkeypatch.chdir(proj / "infra")
    assert project_root() == proj.resolve()
    assert main(["targets", "list"]) == 0
    assert "cpu-ort-fp32" in capsys.readouterr().out

    # a second init does not overwrite a project
    (proj / "params.yaml").write_text((proj / "params.yaml").read_text() + "# mine\n")
    assert main(["init", str(proj)]) == 2
    assert "already a vitforge project" in capsys.readouterr().err
    assert (proj / "params.yaml").read_text().endswith("# mine\n")


def test_a_pre_split_folder_keeps_its_split_and_names_the_model(tmp_path, monkeypatch, capsys):
    proj = tmp_path / "p"
    assert main(["init", str(proj)]) == 0
    data = tmp_path / "ants-and-bees"
    make_imagefolder(data / "train", per_class=12)
    make_imagefolder(data / "val", per_class=3, classes=("ants", "bees"), first_seed=1000)  # other images
    monkeypatch.chdir(tmp_path)  # --data from the current directory, not the root
    capsys.readouterr()
    assert main(["--root", str(proj), "stage", "dataset", "--data", "ants-and-bees"]) == 0
    out = capsys.readouterr().out
    assert "kept as shipped: train/, val/; test drawn from train/" in out
    manifest = yaml.safe_load((proj / "data" / "dataset" / "manifest.json").read_text())
    assert all(f["split"] == "val" for f in manifest["files"] if f["path"].startswith("val/"))
    assert manifest["name"] == "ants-and-bees"
    params = load_params(proj)
    assert model_name(proj, params) == "vitforge-ants-and-bees"  # registry.model_name: null, the default

    assert main(["--root", str(proj), "stage", "dataset", "--data", "ants-and-bees", "--resplit"]) == 0
    assert "kept as shipped" not in capsys.readouterr().out
    manifest = yaml.safe_load((proj / "data" / "dataset" / "manifest.json").read_text())
    assert manifest["given_splits"] == []
