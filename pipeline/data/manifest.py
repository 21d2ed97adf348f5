"""The dataset manifest: every file with its label, split and sha256.

Splits come from a stable hash of the relative path, so the same file lands in the
same split on any machine and in any listing order. Files with identical bytes
(duplicate photos) take the split of the first of them by path, so a duplicate
never sits on both sides of the train/test line.

A pre-split ImageFolder (``ROOT/train/``, ``val/``, ``test/``) keeps the split it was given: a split it lacks
is carved from its train images by the same hash (``val/`` alone given: test is carved from train), unless
``resplit`` merges the folders and splits them all by the hash. ``given_splits`` records which were kept.

Unlabeled images (a separate folder, for MAE only) are listed too, under
``unlabeled/`` with split ``"unlabeled"`` and label None; they take no part in the
train/val/test split, which is the same with or without them. ``native_size`` is
the median width and height of the labelled set's images.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.data.errors import DatasetError
from pipeline.data.readers import RawDataset

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"  # the split name of unlabeled images, and the folder they are copied to


def split_of(rel_path: str, val_fraction: float, test_fraction: float, carve: tuple[str, ...] = ("val", "test")
             ) -> str:
    """train/val/test from the first 64 bits of sha256(relative path); ``carve``: the splits that may be drawn
    (a pre-split set's train images give only the splits the set lacks)."""
    u = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test" if "test" in carve else "train"
    if u < test_fraction + val_fraction:
        return "val" if "val" in carve else "train"
    return "train"


@dataclass
class Manifest:
    format: str
    classes: list[str]
    files: list[dict]  # {"path", "label", "split", "sha256", "width", "height"[, "boxes"]}
    skipped: list[dict] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    native_size: list[int] | None = None  # [median width, median height] of the labelled set's images
    given_splits: list[str] = field(default_factory=list)  # splits kept from a pre-split layout; []: all hashed
    name: str = ""  # the dataset's name (its folder's): the registered model is vitforge-<name> by default

    def split(self, name: str) -> list[dict]:
        return [f for f in self.files if f["split"] == name]

    def labelled_files(self) -> list[dict]:
        """The files of the train/val/test splits (COCO images without a box included): not the unlabeled ones."""
        return [f for f in self.files if f["split"] != UNLABELED]

    def unlabeled_files(self) -> list[dict]:
        return self.split(UNLABELED)

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


def build_manifest(raw: RawDataset, val_fraction: float, test_fraction: float,
                   unlabeled: RawDataset | None = None, *, resplit: bool = False, name: str = "") -> Manifest:
    """The manifest of ``raw`` (labelled) plus, if given, the ``unlabeled`` images under ``unlabeled/``.
    ``resplit``: split a pre-split set by the hash as if it were one folder."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction} (each in [0, 1), sum < 1)")
    given = [] if resplit else sorted({s.split for s in raw.samples if s.split}, key=SPLITS.index)
    if given:
        trained = {s.label for s in raw.samples if s.split == "train"}
        missing = [name for label, name in enumerate(raw.classes) if label not in trained]
        if missing:
            raise DatasetError(raw.root / "train", f"no training images of class {', '.join(missing)} (it is only "
                               "in the val/test folders); add them to train/, or give --resplit to split all by hash")
    carve = tuple(s for s in ("val", "test") if s not in given)
    # Identical bytes take one split: a duplicate never sits on both sides of the line. The shipped val/test
    # files are placed first, so a train/ copy of a val image goes to val with it, not into training.
    ordered = sorted(raw.samples, key=lambda s: s.path)
    by_content: dict[str, str] = {}
    if given:
        for s in ordered:
            if s.split != "train":
                by_content.setdefault(s.sha256, s.split)
    files = []
    for s in ordered:
        if given and s.split != "train":
            split = by_content[s.sha256]  # as the set was shipped (a copy in val/ and test/: the first's)
        else:
            split = by_content.setdefault(s.sha256, split_of(s.path, val_fraction, test_fraction, carve))
        entry = {"path": s.path, "label": s.label, "split": split, "sha256": s.sha256,
                 "width": s.width, "height": s.height}
        if raw.format == "coco":
            entry["boxes"] = s.boxes
        files.append(entry)
    native_size = ([statistics.median_low(s.width for s in raw.samples),
                    statistics.median_low(s.height for s in raw.samples)] if raw.samples else None)
    skipped = [{"path": _rel(k["path"], raw.root), "error": k["error"]} for k in raw.skipped]
    if unlabeled is not None:
        clash = [p for p in [f["path"] for f in files] + raw.extra_files
                 if p == UNLABELED or p.startswith(UNLABELED + "/")]
        if clash:
            raise DatasetError(raw.root / UNLABELED, f"the labelled data has a {UNLABELED!r} folder, where the "
                               "unlabeled images go; rename it")
        # After the labelled files and outside ``by_content``: unlabeled images never move a labelled file's split.
        for s in sorted(unlabeled.samples, key=lambda s: s.path):
            files.append({"path": f"{UNLABELED}/{s.path}", "label": None, "split": UNLABELED, "sha256": s.sha256,
                          "width": s.width, "height": s.height})
        skipped += [{"path": f"{UNLABELED}/{_rel(k['path'], unlabeled.root)}", "error": k["error"]}
                    for k in unlabeled.skipped]
    return Manifest(raw.format, raw.classes, files, skipped, val_fraction, test_fraction, native_size, given, name)


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else path


def load_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(path, "manifest missing: run the dataset stage first")
    return Manifest(**json.loads(path.read_text(encoding="utf-8")))
