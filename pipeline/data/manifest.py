"""The dataset manifest: every file with its label, split and sha256.

Splits come from a stable hash of the relative path, so the same file lands in the
same split on any machine and in any listing order. Files with identical bytes
(duplicate photos) take the split of the first of them by path, so a duplicate
never sits on both sides of the train/test line.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.data.errors import DatasetError
from pipeline.data.readers import RawDataset

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


def split_of(rel_path: str, val_fraction: float, test_fraction: float) -> str:
    """train/val/test from the first 64 bits of sha256(relative path)."""
    u = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class Manifest:
    format: str
    classes: list[str]
    files: list[dict]  # {"path", "label", "split", "sha256", "width", "height"[, "boxes"]}
    skipped: list[dict] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def split(self, name: str) -> list[dict]:
        return [f for f in self.files if f["split"] == name]

    def counts(self) -> dict[str, int]:
        c = Counter(f["split"] for f in self.files)
        return {s: c.get(s, 0) for s in SPLITS}

    def class_histogram(self) -> dict[str, dict[str, int]]:
        """{class name: {split: count}}."""
        hist = {name: dict.fromkeys(SPLITS, 0) for name in self.classes}
        for f in self.files:
            if f["label"] is not None:
                hist[self.classes[f["label"]]][f["split"]] += 1
        return hist

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def build_manifest(raw: RawDataset, val_fraction: float, test_fraction: float) -> Manifest:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction} (each in [0, 1), sum < 1)")
    by_content: dict[str, str] = {}
    files = []
    for s in sorted(raw.samples, key=lambda s: s.path):
        split = by_content.setdefault(s.sha256, split_of(s.path, val_fraction, test_fraction))
        entry = {"path": s.path, "label": s.label, "split": split, "sha256": s.sha256,
                 "width": s.width, "height": s.height}
        if raw.format == "coco":
            entry["boxes"] = s.boxes
        files.append(entry)
    skipped = [{"path": str(Path(k["path"]).relative_to(raw.root)) if Path(k["path"]).is_relative_to(raw.root)
                else k["path"], "error": k["error"]} for k in raw.skipped]
    return Manifest(raw.format, raw.classes, files, skipped, val_fraction, test_fraction)


def load_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(path, "manifest missing: run the dataset stage first")
    return Manifest(**json.loads(path.read_text(encoding="utf-8")))
