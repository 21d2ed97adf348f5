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
    assert main(["targets", "sync"]) == 0  # Dagster's partitions; no dvc.yaml here, so no dvc target list
    out = capsys.readouterr().out
    assert "added ['cpu-ort-fp32']" in out and "no dvc.yaml in this project" in out, out
    assert not (proj / "infra" / "dvc-targets.yaml").exists()

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


def test_a_wheel_install_makes_a_project_without_the_checkout(tmp_path):
    """`pip install vitforge` (not editable) has no checkout around it: init's templates and the params schema
    come from the package's own data, so init and a command on the new project work from the wheel alone."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # an in-tree build writes build/ and *.egg-info: into a copy of the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pipeline", "assets"):
        shutil.copytree(PACKAGE_ROOT / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "params.yaml", "infra/targets/cpu-ort-fp32.yaml"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_ROOT / name, src / name)
    built = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(built),
                    str(src)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = built.glob("vitforge-*.whl")
    with zipfile.ZipFile(wheel) as whl:  # files, not links: the repository's bytes
        assert whl.read("pipeline/project_template/params.yaml") == (PACKAGE_ROOT / "params.yaml").read_bytes()
        assert whl.read("pipeline/project_template/cpu-ort-fp32.yaml") == \
            (PACKAGE_ROOT / "infra" / "targets" / "cpu-ort-fp32.yaml").read_bytes()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)

    env = {k: v for k, v in os.environ.items() if k != "VITFORGE_ROOT"} | {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout
    vitforge = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run([*vitforge, "init", "proj"], env=env, cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "proj" / "params.yaml").read_bytes() == (PACKAGE_ROOT / "params.yaml").read_bytes()
    (tmp_path / "proj" / "params.yaml").write_text(
        (tmp_path / "proj" / "params.yaml").read_text().replace("seed:", "sed:", 1))
    typo = subprocess.run([*vitforge, "targets", "list"], env=env, cwd=tmp_path / "proj", capture_output=True,
                          text=True, timeout=120)
    assert typo.returncode == 2 and "sed" in typo.stderr and "seed" in typo.stderr, typo.stderr  # the schema read
