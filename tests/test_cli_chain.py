"""`vitforge run`: the whole chain from the command line under one time budget, on a tiny config; then
`vitforge rebuild` of what it registered, after the project has moved on, gives the same sha256s."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, clone_code, clone_env, commit_all, set_params

from pipeline.weights import load_weights


def files_of(folder) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and mtime: what a write anywhere in it would change."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_run_splits_its_time_budget_and_ends_registered(tmp_path, digits_few):
    tiny_project = clone_code(tmp_path / "clone")  # a user's clone: the code, params.yaml, .dvc/ in git
    set_params(tiny_project, **TINY)
    set_params(tiny_project, latency__max_mape=1.0, targets_dir="targets", pretrain__min_steps=3,
               supernet__min_steps=3, search__rerank_top_k=2,
               finetune__min_steps=60,  # the shipped model learns whatever the clock leaves it (13 steps: 15 %)
               # fitted to the 16 px images and the 50 ms budget: 8 px patches would leave a 2x2 grid
               space__patch_size="auto", space__img_sizes="auto", space__patch_choices=[4, 8],
               space__n_img_sizes=2, space__max_upscale=1.0, latency__n_fit=5, latency__n_holdout=3)
    (tiny_project / "targets").mkdir()
    (tiny_project / "targets" / "box.yaml").write_text("runtime: onnxruntime\ndevice: cpu\nprecision: fp32\n"
                                                       "threads: 1\nbatch_size: 1\nlatency_budget_ms: 50\n")
    commit_all(tiny_project, "tiny config, target box")
    env = clone_env(tiny_project)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(tiny_project), *argv],
                              cwd=tiny_project, env=env, capture_output=True, text=True, check=False, timeout=600)

    proc = cli("run", "--data", str(digits_few), "--target", "box", "--time-budget", "15s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for stage in ("pretrain", "supernet", "search box", "finetune box"):
        assert f"== {stage} (time budget " in out
    assert "registered vitforge-digits version 1 as candidate-box" in out
    spent = next(line for line in out.splitlines() if "(budget 15 s for the training stages)" in line)
    seconds = [float(w) for w in spent.split() if w.replace(".", "").isdigit()][:4]
    assert sum(seconds) < 15 * 1.5, spent  # the training stages kept (close) to the budget
    search = json.loads((tiny_project / "runs" / "search" / "box.json").read_text())
    assert search["finetuned_val_top1"] is not None  # the pick was made on brief fine-tunes
    assert sum("finetuned_top1" in r for r in search["tried"]) == 2
    # whether the val split told the two apart: the gap against two standard errors of the difference
    other = next(r["finetuned_top1"] for r in search["tried"] if "finetuned_top1" in r and r["arch"] != search["arch"])
    assert search["runner_up_gap"] == pytest.approx(search["finetuned_val_top1"] - other)
    n = search["val_images"]
    se = math.hypot(*(math.sqrt(p * (1 - p) / n) for p in (search["finetuned_val_top1"], other)))
    assert search["separated"] == (search["runner_up_gap"] > 2 * se)
    assert ("do not separate the top archs" in out) == (not search["separated"])
    if not search["separated"]:  # tied: the slower of the two within budget
        assert search["measured_p50_ms"] == max(r["measured_ms"] for r in search["tried"] if "finetuned_top1" in r)
    # the pretrain stage fitted the space; every later stage trained and searched that one
    fitted = {"patch_size": 4, "img_sizes": [16]}  # the fastest subnet fits a quarter of 50 ms at 16 px
    assert "space fitted to box (50 ms) and the images' native 16 px: patch_size 4, img_sizes [16]" in out
    for weights in ("pretrain/backbone.safetensors", "supernet/supernet.safetensors"):
        space = load_weights(tiny_project / "runs" / weights)[1]["space"]
        assert {k: space[k] for k in fitted} == fitted and "patch_choices" not in space
    assert search["arch"]["img_size"] == 16
    finetune = json.loads((tiny_project / "runs" / "finetune" / "box" / "result.json").read_text())
    assert finetune["steps"] >= 60 and finetune["test_top1"] > 0.2, finetune  # 10 classes: well above chance

    # the project copied to another folder (the original moved away): the next stage there reads and writes
    # only the copy, since every recorded path is relative to the root and the MLflow store relocates itself
    copy, away = tmp_path / "copy", tmp_path / "clone.away"
    shutil.copytree(tiny_project, copy, symlinks=True)
    tiny_project.rename(away)
    before_away = files_of(away)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "stage", "package", "--target", "box"],
                          cwd=copy, env=clone_env(copy), capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # no --root: the project around the current directory
    assert "registered vitforge-digits version 2 as candidate-box" in proc.stdout
    assert not tiny_project.exists(), "a write at the original's path"
    assert files_of(away) == before_away, "the original changed"
    pkg = json.loads((copy / "runs" / "package" / "box" / "result.json").read_text())
    assert (pkg["package"]["folder"], pkg["package"]["onnx"]) == ("runs/package/box", "runs/package/box/model.onnx")
    assert json.loads((copy / "runs" / "search" / "box.json").read_text())["supernet_weights"] == \
        "runs/supernet/supernet.safetensors"
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vitforge")
    assert exp.artifact_location == (copy / "mlflow" / "artifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.artifact_uri.startswith(copy.as_uri() + "/") for r in runs)
    written = Path(runs[0].info.artifact_uri.removeprefix("file://"))  # the package run's, just logged
    assert written.is_dir() and written.is_relative_to(copy / "mlflow" / "artifacts")
    shutil.rmtree(copy)
    away.rename(tiny_project)

    # the project moves on: a new data version and a changed param, committed
    registered = json.loads((tiny_project / "runs" / "package" / "box" / "result.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(digits_few, moved)
    for label in moved.iterdir():
        next(iter(sorted(label.iterdir()))).unlink()  # a scan fewer of each digit
    assert cli("stage", "dataset", "--data", str(moved)).returncode == 0
    set_params(tiny_project, finetune__lr=1.0e-3)
    # and the code grew a parameter: this checkout's params.yaml (the schema of the code that runs the rebuild)
    # has a key the recorded commit's lacks; that commit's params are read as that commit's code reads them
    grown = yaml.safe_load((tiny_project / "params.yaml").read_text())
    grown["dataset"]["added_since"] = True
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(grown, sort_keys=False))
    commit_all(tiny_project, "new data, new lr, a new key")
    before = {f: (tiny_project / f).read_bytes() for f in ("params.yaml", "data/dataset.dvc",
                                                           "runs/finetune/box/model.safetensors")}
    head = subprocess.run(["git", "-C", str(tiny_project), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout

    proc = cli("rebuild", "vitforge-digits@1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("== rebuild of vitforge-digits version 1 (box)")[1]
    for name in ("weights (tensors)", "model.onnx", "label_map.json"):
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.split()[-1] == "yes", table
    assert "identical: every sha256 matches" in proc.stdout
    # the rebuild's search says the brief fine-tunes' steps it replayed, not params.yaml's search.rerank_steps
    each = re.search(r"\((\d+) steps each\)", out).group(0)
    assert each in proc.stdout.split("== stage search")[1].split("== stage finetune")[0], (each, proc.stdout)
    assert "the project's registry is not touched" in proc.stdout
    assert registered["package"]["files_sha256"]["model.onnx"][:16] in table

    # nothing of the user's moved: working tree, HEAD, registry (the rebuild registered in its own store)
    assert {f: (tiny_project / f).read_bytes() for f in before} == before
    assert subprocess.run(["git", "-C", str(tiny_project), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout == head
    worktrees = subprocess.run(["git", "-C", str(tiny_project), "worktree", "list"], capture_output=True, text=True,
                               check=True).stdout
    assert len(worktrees.splitlines()) == 1, worktrees
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_project / 'mlflow' / 'mlflow.db'}")
    assert [str(v.version) for v in client.search_model_versions("name='vitforge-digits'")] == ["1"]
    exp = client.get_experiment_by_name("vitforge-rebuild")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["matched"] == 1.0 and run.data.tags["version"] == "1"
