"""Stage ``dataset``: read, validate, split, copy, version with DVC, log to MLflow.

An optional folder of unlabeled images (any tree, for MAE pre-training only) is
validated like the labelled images, copied to ``<tracked_dir>/unlabeled/`` and
versioned by the same ``dvc add``; the manifest lists it with split "unlabeled".
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots
from pipeline.data import build_manifest, read_dataset
from pipeline.data.demo import write_digits
from pipeline.data.fingerprint import content_hash
from pipeline.data.manifest import UNLABELED
from pipeline.data.readers import SPLIT_FOLDERS, read_unlabeled
from pipeline.data.versioning import aside, commit_version, recover_interrupted
from pipeline.params import resolve
from pipeline.paths import paths, write_result
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
    num_images: int  # labelled set (train + val + test)
    skipped: list[dict]
    mlflow_run_id: str
    histogram_uri: str
    unlabeled: int  # images under unlabeled/: MAE pre-training only
    native_size: list[int] | None  # [median width, median height] of the labelled images
    without_box: int = 0  # COCO images with no box: no label, so no part in training or testing
    source_hash: str = ""  # content hash of the source folder (pipeline.data.fingerprint): the data sensor's
    given_splits: list[str] | None = None  # the splits a pre-split folder was shipped with, kept; None: hashed
    name: str = ""  # the dataset's name: the registered model is vitforge-<name> unless registry.model_name says

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_folder(data: str, root: Path) -> Path:
    """Where ``dataset.data`` lives: a path (relative ones from the root), or data/raw/digits for the digits."""
    return root / "data" / "raw" / "digits" if data == BUILTIN_DIGITS else resolve(data, root)


def dataset_name(data: str, src: Path) -> str:
    """A name for the data: its folder's (the parent's for a split folder such as ``hymenoptera/train``), in the
    characters a registered model name takes; ``digits`` for the builtin digits."""
    if data == BUILTIN_DIGITS:
        return "digits"
    folder = src.resolve()
    if folder.name.lower() in SPLIT_FOLDERS and folder.parent.name:
        folder = folder.parent
    return re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.") or "dataset"


def resolve_source(data: str, root: Path, image_size: int) -> Path:
    """A data path, or ``builtin:digits`` (written once to data/raw/digits)."""
    if data == BUILTIN_DIGITS:
        dest = source_folder(data, root)
        if not dest.exists():
            staged = dest.with_name("digits.staged")
            shutil.rmtree(staged, ignore_errors=True)
            write_digits(staged, image_size)
            staged.rename(dest)
        return dest
    return resolve(data, root)


def val_fraction(p: dict[str, Any], n: int) -> float:
    """``val_fraction``, raised on small sets so val holds about ``min_val_images`` (at most
    ``max_val_fraction``): the search ranks its candidates on val, and 20 images cannot tell 5 points apart."""
    if not n:
        return p["val_fraction"]
    return max(p["val_fraction"], min(p["min_val_images"] / n, p["max_val_fraction"]))


def run_dataset(
    root: Path,
    params: dict[str, Any],
    tracker: Tracker,
    *,
    data: str,
    fmt: str,
    skip_invalid: bool,
    tags: dict[str, str] | None = None,
    unlabeled: str | None = None,
    resplit: bool | None = None,
) -> DatasetResult:
    """``unlabeled``: a folder of images without labels (any tree) that only MAE pre-training sees.
    ``resplit`` (default: params.yaml ``dataset.resplit``): split a train/val(/test) layout by the hash instead
    of keeping its split."""
    p = params["dataset"]
    target = paths(root, params).dataset()
    remote_url = resolve(p["dvc_remote_url"], root)
    # A commit a killed run left half done is finished or undone first, whatever this run's input.
    recover_interrupted(root, target, p["dvc_remote_name"], remote_url)
    src = resolve_source(data, root, p["demo_image_size"])
    # Everything that can fail on bad input happens before the tracked folder is touched.
    raw = read_dataset(src, fmt, skip_invalid=skip_invalid, max_pixels=p["max_pixels"])
    source_hash = content_hash(src)
    unl_src = resolve(unlabeled, root) if unlabeled else None
    raw_unl = read_unlabeled(unl_src, skip_invalid=skip_invalid, max_pixels=p["max_pixels"]) if unl_src else None
    resplit = p["resplit"] if resplit is None else resplit
    manifest = build_manifest(raw, val_fraction(p, len(raw.samples)), p["test_fraction"], raw_unl, resplit=resplit,
                              name=dataset_name(data, src))
    labelled = manifest.labelled_files()
    n_unlabeled = len(manifest.unlabeled_files())
    without_box = sum(1 for f in labelled if f["label"] is None)  # COCO images with no box

    target.parent.mkdir(parents=True, exist_ok=True)
    staged = aside(target, "staged")
    shutil.rmtree(staged, ignore_errors=True)
    copies = [(src / f["path"], f["path"]) for f in labelled] + [(src / rel, rel) for rel in raw.extra_files]
    if unl_src:
        copies += [(unl_src / s.path, f"{UNLABELED}/{s.path}") for s in raw_unl.samples]
    for origin, rel in copies:
        dst = staged / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, dst)
    manifest.write(staged)
    # Swap in, `dvc add` and push as one recoverable step (pipeline.data.versioning).
    version = commit_version(root, staged, target, p["dvc_remote_name"], remote_url)

    counts = manifest.counts()
    hist = manifest.class_histogram()
    with tracker.run("dataset", {"dataset_version": version, "source_hash": source_hash, **(tags or {})}) as run:
        import mlflow

        mlflow.log_params({"data": data, "format": fmt, "skip_invalid": skip_invalid,
                           "val_fraction": p["val_fraction"], "test_fraction": p["test_fraction"],
                           "unlabeled": unlabeled or "", "native_size": str(manifest.native_size),
                           "resplit": resplit, "given_splits": ",".join(manifest.given_splits) or "none",
                           "name": manifest.name})
        mlflow.log_metrics({"images": len(labelled), "classes": len(manifest.classes),
                            "skipped": len(manifest.skipped), **{f"images_{k}": v for k, v in counts.items()},
                            f"images_{UNLABELED}": n_unlabeled, "images_without_box": without_box})
        if fmt == "coco":
            mlflow.set_tag("coco_label_rule", "an image's label is the category of its largest box")
        log_json(hist, "class_histogram.json")
        hist_uri = log_figure(plots.class_histogram(hist, f"dataset {version[:8]}"), "class_histogram.png")
        log_file(target / "manifest.json")
        run_id = run.info.run_id
    log.info("dataset version %s: %d images, %s, %d unlabeled, native size %s", version, len(labelled), counts,
             n_unlabeled, manifest.native_size)
    # the version alone (no run id): dvc.yaml's later stages depend on it, and it changes only with the data
    write_result(paths(root, params).dataset_version_file(), {"version": version,
                                                              "tracked_dir": paths(root, params).rel(target)})
    rel = paths(root, params).rel
    return DatasetResult(version, rel(target), rel(target / "manifest.json"), manifest.format, manifest.classes,
                         counts, hist, len(labelled), manifest.skipped, run_id, hist_uri,
                         unlabeled=n_unlabeled, native_size=manifest.native_size, without_box=without_box,
                         source_hash=source_hash, given_splits=manifest.given_splits or None, name=manifest.name)
