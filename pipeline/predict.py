"""``vitforge predict``: a packaged model's labels for images, through ONNX Runtime, preprocessed as it states.

A package (a folder the package stage wrote, or a registered version downloaded from MLflow) holds
``model.onnx`` (uint8 NHWC in, normalization inside), ``label_map.json`` and ``package.json``, whose ``input``
names the size and the resize: PIL, RGB, bilinear to size x size, as the stages' own loader does
(``pipeline.data.tensors``), so predictions here are the engine's test predictions.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.errors import DatasetError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RESIZE = "PIL bilinear, RGB, to size x size"  # what package.json states; the only method there is


@dataclass
class Package:
    onnx: Path
    labels: list[str]
    size: int
    source: str  # "NAME version N" or the folder


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (label, probability), best first
    truth: str | None = None


def open_package(folder: Path, source: str) -> Package:
    """A package folder: the package stage's, or a registered version's (files under ``artifacts/``)."""
    from pipeline.registry.mlflow_registry import registered_file

    def find(name: str) -> Path:
        try:
            return registered_file(folder, name)
        except FileNotFoundError:
            raise DatasetError(folder, f"no {name}: not an edge package (expected model.onnx, label_map.json, "
                               "package.json)") from None

    spec = json.loads(find("package.json").read_text())
    resize = spec["input"].get("resize", RESIZE)
    if resize != RESIZE:
        raise DatasetError(find("package.json"), f"states resize {resize!r}; this vitforge knows only {RESIZE!r}")
    label_map = json.loads(find("label_map.json").read_text())
    return Package(find("model.onnx"), [label_map[str(i)] for i in range(len(label_map))],
                   int(spec["input"]["shape"][1]), source)


def registered_package(model: str, ref: str) -> Package:
    from pipeline.registry.mlflow_registry import load_registered, model_version

    mv = model_version(model, ref)  # an unknown name, version or alias: one line
    return open_package(load_registered(model, str(mv.version)), f"{model} version {mv.version}")


def collect(inputs: list[Path], split: str | None) -> list[tuple[Path, str | None]]:
    """Image files, each with its true label when known: a dataset version's manifest (``split`` of it), else
    the name of a class folder it sits in (an ImageFolder tree), else None."""
    from pipeline.data.manifest import load_manifest

    found: list[tuple[Path, str | None]] = []
    for item in inputs:
        if item.is_dir() and (item / "manifest.json").is_file():
            manifest = load_manifest(item)
            files = manifest.split(split) if split else manifest.labelled_files()
            found += [(item / f["path"], None if f["label"] is None else manifest.classes[f["label"]])
                      for f in files]
        elif item.is_dir():
            found += [(p, p.parent.name if p.parent != item else None) for p in sorted(item.rglob("*"))
                      if p.suffix.lower() in SUFFIXES and p.is_file()]
        elif item.is_file():
            found.append((item, None))
        else:
            raise DatasetError(item, "no such file or folder")
    if not found:
        raise DatasetError(inputs[0], "no images found")
    return found


def load(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(path, f"cannot be read as an image ({err})") from None


def predict(pkg: Package, files: list[tuple[Path, str | None]], top_k: int = 1, threads: int = 1,
            batch: int = 64, skipped: list[DatasetError] | None = None) -> list[Prediction]:
    """``skipped``: collect the images that cannot be read there and go on without them (else the first stops
    it)."""
    from pipeline.targets.runners import ort_session

    session = ort_session(pkg.onnx, threads)
    inp, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    preds = []
    for i in range(0, len(files), batch):
        chunk, pixels = [], []
        for path, truth in files[i:i + batch]:
            try:
                pixels.append(load(path, pkg.size))
            except DatasetError as err:
                if skipped is None:
                    raise
                skipped.append(err)
                continue
            chunk.append((path, truth))
        if not chunk:
            continue
        logits = session.run([out], {inp: np.stack(pixels)})[0]
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        for (path, truth), row in zip(chunk, probs, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            preds.append(Prediction(str(path), [(pkg.labels[j], float(row[j])) for j in best], truth))
    return preds


def write_csv(preds: list[Prediction], path: Path, source: str) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        k = max(len(p.top) for p in preds)
        w.writerow(["path", *[c for j in range(1, k + 1) for c in (f"label_{j}", f"probability_{j}")], "truth",
                    "model"])
        for p in preds:
            w.writerow([p.path, *[v for label, prob in p.top for v in (label, f"{prob:.6f}")], p.truth or "", source])
    return path
