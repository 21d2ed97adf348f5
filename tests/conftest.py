"""Shared fixtures: a throw-away project root (params, DVC repo, MLflow store) and real images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.params import PACKAGE_ROOT

REPO = PACKAGE_ROOT


def png(path: Path, seed: int = 0, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_imagefolder(root: Path, classes=("ants", "bees"), per_class: int = 4, first_seed: int = 0) -> Path:
    """Random-pixel PNGs, each class its own seeds; another ``first_seed`` gives other images."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{name}_{i}.png", seed=first_seed + c * 100 + i)
    return root


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "images")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's real digit scans, written once per session at 16 px."""
    from pipeline.data.demo import write_digits

    dest = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(dest, image_size=16)
    return dest


@pytest.fixture(scope="session")
def digits_few(digits_dir, tmp_path_factory) -> Path:
    """The first 40 scans of each digit (400 real images): for chain tests where the set's size is not the
    point, so that they stay quick."""
    dest = tmp_path_factory.mktemp("digits_few") / "digits"
    for label in sorted(d.name for d in digits_dir.iterdir() if d.is_dir()):
        (dest / label).mkdir(parents=True)
        for f in sorted((digits_dir / label).iterdir())[:40]:
            shutil.copy(f, dest / label / f.name)
    return dest


def make_project(root: Path) -> Path:
    """A project root as a user has one: a git checkout whose first commit holds the repo's params.yaml
    (registration records the commit, and refuses a tree that is not a checkout)."""
    import subprocess

    root.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    git = ["git", "-c", "user.name=vitforge tests", "-c", "user.email=tests@vitforge.invalid", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    return root


GIT = ["git", "-c", "user.name=vitforge tests", "-c", "user.email=tests@vitforge.invalid"]


def commit_all(root: Path, message: str) -> str:
    """``git add -A`` and commit in ``root``; returns the new HEAD."""
    import subprocess

    subprocess.run([*GIT, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(root), "commit", "-q", "-m", message], check=True)
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def clone_code(dest: Path) -> Path:
    """A project that holds vitforge's code, as a user's clone does: this checkout's files as they are now
    (tracked and untracked, not ignored) in a fresh git repo with one commit. Its CLI runs that code with
    ``PYTHONPATH`` = the clone (``clone_env``)."""
    import subprocess

    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)  # links stay links, as in a git clone
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    commit_all(dest, "clone")
    return dest


def clone_env(clone: Path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "VITFORGE_ROOT"}
    env["PYTHONPATH"] = str(clone)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project root: the repo's params.yaml; DVC repo and MLflow store made on first use."""
    return make_project(tmp_path / "project")


def set_params(root: Path, **overrides) -> dict:
    """Override ``section__key=value`` in root/params.yaml; return the new params."""
    from pipeline.params import write_params

    return write_params(root, {k.replace("__", "."): v for k, v in overrides.items()})


TINY = {
    "space__patch_size": 4, "space__img_sizes": [8, 16], "space__depths": [1, 2], "space__embed_dims": [16, 32],
    "space__head_dim": 8, "space__mlp_ratios": [1.0, 2.0],
    "pretrain__epochs": 1, "pretrain__batch_size": 64, "pretrain__decoder_dim": 16, "pretrain__decoder_depth": 1,
    "pretrain__decoder_heads": 2, "pretrain__warmup_steps": 2, "pretrain__checkpoint_every": 5,
    "pretrain__threads": 1,
    "supernet__epochs": 1, "supernet__batch_size": 64, "supernet__warmup_steps": 2, "supernet__checkpoint_every": 5,
    "supernet__eval_random_archs": 2, "supernet__threads": 1,
    "dataset__demo_image_size": 16,
    "latency__n_fit": 10, "latency__n_holdout": 6, "latency__warmup": 2, "latency__runs": 10,
    "search__population": 4, "search__generations": 2, "search__parents": 2, "search__mutations_per_gen": 2,
    "search__crossovers_per_gen": 2, "search__rerank_top_k": 2, "search__rerank_steps": 20,
    "finetune__epochs": 2, "finetune__threads": 1, "finetune__warmup_steps": 2, "finetune__checkpoint_every": 10,
    "finetune__lr": 3.0e-3,
    "export__warmup": 2, "export__runs": 10, "export__parity_images": 32, "export__calibration_images": 32,
}


@pytest.fixture(scope="session")
def digits_dataset(digits_dir, tmp_path_factory) -> Path:
    """The digits with a manifest, as the dataset stage leaves them (no DVC: for training tests)."""
    from pipeline.data import build_manifest, read_dataset

    folder = tmp_path_factory.mktemp("digits_ds") / "dataset"
    shutil.copytree(digits_dir, folder)
    build_manifest(read_dataset(folder), 0.1, 0.1).write(folder)
    return folder


@pytest.fixture
def tiny_project(project) -> Path:
    """A project root whose params.yaml has a tiny search space and one-epoch schedules."""
    set_params(project, **TINY)
    return project


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``mlflow server`` on loopback, its own store and proxied artifacts; stopped by process group.
    Shared by the edge tests (each uses fleet names of its own)."""
    from pipeline.loopback import start_mlflow_server, stop_group

    root = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = start_mlflow_server(root)
    try:
        yield uri, root / "artifacts"
    finally:
        stop_group(proc)


def edge_target(budget_ms: float):
    from pipeline.targets import Target

    return Target(name="cpu-ort-fp32", description="test", runtime="onnxruntime", device="cpu", precision="fp32",
                  threads=1, batch_size=1, latency_budget_ms=budget_ms)


EDGE_MODEL = "edge-digits"  # the registered model of the edge tests


@pytest.fixture(scope="session")
def packages(tmp_path_factory, digits_dataset):
    """Package folders: good (twice), over budget on any device, and exported with the wrong normalization."""
    import dataclasses

    from pipeline.export.onnx import export_onnx
    from pipeline.export.package import build_package
    from pipeline.finetune.train import finetune, load_model
    from pipeline.models.supernet import SearchSpace
    from pipeline.nas.supernet_train import train_supernet
    from pipeline.weights import sha256_file

    root = make_project(tmp_path_factory.mktemp("edge") / "project")
    params = set_params(root, **TINY)
    sn = train_supernet(digits_dataset, root / "sn", params, backbone=None, overrides={"epochs": 2})
    arch = SearchSpace.from_params(params["space"]).largest()
    # long enough that a package exported with the wrong normalization disagrees with PyTorch on the probe set
    ft = finetune(digits_dataset, root / "ft", params, sn.weights, arch, overrides={"epochs": 4})
    pkgs = {name: build_package(ft.weights, digits_dataset, root / name, edge_target(budget), params)
            for name, budget in (("good", 50.0), ("good2", 50.0), ("slow", 1e-6))}
    # the same weights exported with another mean/std: every hash matches, the outputs do not
    bad = root / "wrongnorm"
    shutil.copytree(pkgs["good"].folder, bad)
    model, _ = load_model(ft.weights)
    export_onnx(model, bad / "model.onnx", input_size=arch.img_size, mean=[0.5] * 3, std=[8.0] * 3)
    files = {f.name: sha256_file(f) for f in sorted(bad.iterdir()) if f.is_file() and f.name != "package.json"}
    pkgs["wrongnorm"] = dataclasses.replace(pkgs["good"], folder=bad, onnx=bad / "model.onnx", files_sha256=files)
    return pkgs


def register(uri: str, pkg, model: str = EDGE_MODEL) -> str:
    """Register ``pkg`` on the server as the pipeline does; returns the version."""
    import mlflow
    from pipeline.registry.mlflow_registry import register_package, version_tags

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("edge-test")
    with mlflow.start_run():
        tags = version_tags(pkg, dataset_version="d", git_sha="g", dagster_run_id="r", params={}, test_top1=0.5,
                            latency_mape=None)
        return register_package(pkg, model, tags)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``trt`` need TensorRT and a GPU: skipped, with the reason, where tensorrt cannot be imported."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        return
    skip = pytest.mark.skip(reason="tensorrt is not installed on this machine")
    for item in items:
        if "trt" in item.keywords:
            item.add_marker(skip)


DATASET_VERSION = "tiny.dir"


@pytest.fixture(scope="session")
def shipped(tmp_path_factory, digits_dataset):
    """A tiny project with targets, a trained supernet and a fine-tuned largest arch (~85 % test top-1): for the
    packaging and registry tests, and for predict (which only reads the weights)."""
    import re

    from pipeline.finetune.train import finetune
    from pipeline.models.supernet import SearchSpace
    from pipeline.nas.supernet_train import train_supernet

    root = make_project(tmp_path_factory.mktemp("ship") / "project")
    # A model that has learned the digits (~85 % test top-1 in ~10 s): the gates have decisions to protect.
    params = set_params(root, **{**TINY, "export__parity_images": 64}, finetune__ema_decay=None, finetune__mixup=0.0,
                        finetune__cutmix=0.0,
                        finetune__mix_prob=0.0, finetune__rand_augment=None, finetune__random_erasing=0.0,
                        finetune__layer_decay=None, finetune__label_smoothing=0.0, finetune__drop_path=0.0,
                        # 187 test images: 0.01 is under two of them, too fine for a 5k-parameter model's int8;
                        # its top-1 agreement with PyTorch was 0.9375 on 32 images on one CPU (int8 kernels differ
                        # between CPUs): 64 images and 0.9 (damaged calibration falls to chance, far below)
                        export__int8_max_top1_drop=0.03, export__int8_min_agreement=0.9)
    targets = root / "infra" / "targets"
    targets.mkdir(parents=True)
    for name in ("cpu-ort-fp32", "cpu-ort-int8"):
        text = (PACKAGE_ROOT / "infra" / "targets" / f"{name}.yaml").read_text()
        (targets / f"{name}.yaml").write_text(re.sub(r"latency_budget_ms: [0-9.]+", "latency_budget_ms: 50", text))
    sn = train_supernet(digits_dataset, root / "sn", params, backbone=None, overrides={"epochs": 2})
    arch = SearchSpace.from_params(params["space"]).largest()
    ft = finetune(digits_dataset, root / "ft", params, sn.weights, arch, overrides={"epochs": 16},
                  meta={"dataset_version": DATASET_VERSION, "git_sha": "abc", "dagster_run_id": ""})
    assert ft.test.top1 > 0.6
    git_commit(root)  # a project as users have it: a git checkout (runs/, mlflow/ are untracked)
    return root, digits_dataset, ft


def git(root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def git_commit(root: Path) -> str:
    git(root, "init", "-q")
    git(root, "add", "params.yaml", "infra")
    git(root, "commit", "-q", "-m", "project")
    return git(root, "rev-parse", "HEAD")
