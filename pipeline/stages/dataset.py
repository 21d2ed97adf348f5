"""Stage ``dataset``: read, validate, split, copy, version with DVC, log to MLflow."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots
from pipeline.data import build_manifest, read_dataset
from pipeline.data.demo import write_digits
from pipeline.data.versioning import dvc_add_and_push, replace_dir
from pipeline.params import resolve
from pipeline.tracking import Tracker, log_figure, log_file, log_json

log = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"


@dataclass
class DatasetResult:
    version: str  # DVC md5 of the tracked folder
    tracked_dir: str
    manifest_path: str
    format: str
    classes: list[str]
    counts: dict[str, int]
    class_histogram: dict[str, dict[str, int]]  # {class: {split: images}}
    num_images: int
    skipped: list[dict]
    mlflow_run_id: str
    histogram_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_source(data: str, root: Path, image_size: int) -> Path:
    """A data path, or ``builtin:digits`` (written once to data/raw/digits)."""
    if data == BUILTIN_DIGITS:
        dest = root / "data" / "raw" / "digits"
        if not dest.exists():
            staged = dest.with_name("digits.staged")
            shutil.rmtree(staged, ignore_errors=True)
            write_digits(staged, image_size)
            staged.rename(dest)
        return dest
    return resolve(data, root)


def run_dataset(
    root: Path,
    params: dict[str, Any],
    tracker: Tracker,
    *,
    data: str,
    fmt: str,
    skip_invalid: bool,
    tags: dict[str, str] | None = None,
) -> DatasetResult:
    p = params["dataset"]
    src = resolve_source(data, root, p["demo_image_size"])
    # Everything that can fail on bad input happens before the tracked folder is touched.
    raw = read_dataset(src, fmt, skip_invalid=skip_invalid)
    manifest = build_manifest(raw, p["val_fraction"], p["test_fraction"])

    target = resolve(p["tracked_dir"], root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".staged")
    shutil.rmtree(staged, ignore_errors=True)
    for rel in [f["path"] for f in manifest.files] + raw.extra_files:
        dst = staged / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)
    manifest.write(staged)
    replace_dir(staged, target)
    version = dvc_add_and_push(root, target, p["dvc_remote_name"], resolve(p["dvc_remote_url"], root))

    counts = manifest.counts()
    hist = manifest.class_histogram()
    with tracker.run("dataset", {"dataset_version": version, **(tags or {})}) as run:
        import mlflow

        mlflow.log_params({"data": data, "format": fmt, "skip_invalid": skip_invalid,
                           "val_fraction": p["val_fraction"], "test_fraction": p["test_fraction"]})
        mlflow.log_metrics({"images": len(manifest.files), "classes": len(manifest.classes),
                            "skipped": len(manifest.skipped), **{f"images_{k}": v for k, v in counts.items()}})
        log_json(hist, "class_histogram.json")
        hist_uri = log_figure(plots.class_histogram(hist, f"dataset {version[:8]}"), "class_histogram.png")
        log_file(target / "manifest.json")
        run_id = run.info.run_id
    log.info("dataset version %s: %d images, %s", version, len(manifest.files), counts)
    return DatasetResult(version, str(target), str(target / "manifest.json"), manifest.format, manifest.classes,
                         counts, hist, len(manifest.files), manifest.skipped, run_id, hist_uri)
