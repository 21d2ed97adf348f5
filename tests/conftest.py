"""Shared fixtures: a throw-away project root (params, DVC repo, MLflow store) and real images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.params import PACKAGE_ROOT

REPO = PACKAGE_ROOT


def png(path: Path, seed: int = 0, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_imagefolder(root: Path, classes=("ants", "bees"), per_class: int = 4) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{name}_{i}.png", seed=c * 100 + i)
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


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project root: the repo's params.yaml and a DVC repo with its own local remote."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def set_params(root: Path, **overrides) -> dict:
    """Write ``section.key=value`` overrides into root/params.yaml; return the new params."""
    from pipeline.params import _load

    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _load.cache_clear()
    return params
