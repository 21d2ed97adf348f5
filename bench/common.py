"""Helpers the benchmarks share: a throw-away project root over a dataset, and timing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pipeline  # noqa: F401  (torchvision op schemas before timm)
from pipeline.data import build_manifest, read_dataset
from pipeline.data.demo import write_digits
from pipeline.params import PACKAGE_ROOT, write_params


def bench_root(root: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A project root at ``root`` with the repo's params.yaml plus ``{"section.key": value}`` overrides."""
    targets = {"targets_dir": str(PACKAGE_ROOT / "infra" / "targets")}  # the repo's target files
    return write_params(root, targets | (overrides or {}), base=PACKAGE_ROOT / "params.yaml")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` (values in YAML syntax) -> ``{"section.key": value}``."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def manifest_copy(data: Path | None, dest: Path, image_size: int = 8) -> Path:
    """A dataset folder with its manifest (the digits when ``data`` is None), without DVC."""
    if dest.exists():
        shutil.rmtree(dest)
    if data is None:
        write_digits(dest, image_size)
    else:
        shutil.copytree(data, dest)
    build_manifest(read_dataset(dest), 0.1, 0.1).write(dest)
    return dest


def eager_p50_ms(model: torch.nn.Module, x: torch.Tensor, warmup: int = 30, runs: int = 200) -> float:
    torch.set_num_threads(1)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50))


def gemm_gflops(n: int = 512, runs: int = 20) -> float:
    """This machine's fp32 GEMM throughput on one thread (torch.mm)."""
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * n**3 * runs / (time.perf_counter() - t0) / 1e9
