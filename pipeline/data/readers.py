"""Read an ImageFolder tree or a COCO detection set and validate every file in it.

Both readers return a ``RawDataset``: the class names and one ``Sample`` per valid
image. Bad input raises ``DatasetError`` naming the file, unless ``skip_invalid``
is set, in which case each bad file is listed in ``RawDataset.skipped`` instead.
``read_unlabeled`` reads a plain tree of images with no labels (for MAE only) the
same way, with the same checks.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.data.errors import DatasetError
from pipeline.data.images import IMAGE_SUFFIXES, check_box, check_name, inspect_image

log = logging.getLogger(__name__)


@dataclass
class Sample:
    path: str  # relative to the dataset root, POSIX separators
    label: int | None
    width: int
    height: int
    sha256: str
    boxes: list[dict] = field(default_factory=list)  # COCO only: {"bbox": [x, y, w, h], "category": int}
    split: str | None = None  # a pre-split ImageFolder's (ROOT/<split>/<class>/): train, val or test


@dataclass
class RawDataset:
    root: Path
    format: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)  # {"path": ..., "error": ...}
    extra_files: list[str] = field(default_factory=list)  # e.g. annotations.json, copied along


def read_dataset(root: Path | str, fmt: str = "imagefolder", *, skip_invalid: bool = False,
                 max_pixels: int | None = None) -> RawDataset:
    """``max_pixels`` (params.yaml ``dataset.max_pixels``): the most pixels one file may decode to; None:
    Pillow's own decompression-bomb limit alone."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(root, "data path does not exist")
    if not root.is_dir():
        raise DatasetError(root, "data path is not a directory")
    readers: dict[str, Callable[[Path, bool, int | None], RawDataset]] = {"imagefolder": _read_imagefolder,
                                                                          "coco": _read_coco}
    if fmt not in readers:
        raise DatasetError(root, f"unknown dataset format {fmt!r} (expected one of {sorted(readers)})")
    return readers[fmt](root, skip_invalid, max_pixels)


def read_unlabeled(root: Path | str, *, skip_invalid: bool = False, max_pixels: int | None = None) -> RawDataset:
    """Every image file below ``root`` (any tree, hidden entries ignored), each with label None.

    Validated exactly as labelled images are (full decode, UTF-8 names); sample paths are
    relative to ``root``. For MAE pre-training only: the supervised stages never see them.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(root, "unlabeled data path does not exist")
    if not root.is_dir():
        raise DatasetError(root, "unlabeled data path is not a directory")
    files = _walk_images(root)
    if not files:
        raise DatasetError(root, "unlabeled folder has no images")
    skipped: list[dict] = []
    info = _inspect_all(files, skip_invalid, skipped, max_pixels)
    samples = [Sample(f.relative_to(root).as_posix(), None, *info[f]) for f in files if f in info]
    if not samples:
        raise DatasetError(root, "unlabeled folder has no valid images")
    return RawDataset(root, "unlabeled", [], samples, skipped)


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(path, f"cannot read directory ({err.strerror or err})") from None


def _walk_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden entries ignored."""
    found: list[Path] = []
    for entry in _scandir(folder):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            found.extend(_walk_images(path))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
        else:
            log.warning("ignoring %s: not an image file suffix", path)
    return found


def _inspect_all(paths: list[Path], skip_invalid: bool, skipped: list[dict],
                 max_pixels: int | None = None) -> dict[Path, tuple[int, int, str]]:
    """Decode every image (threads: Pillow releases the GIL while decoding).

    Pillow's DecompressionBombWarning becomes an error here, so ``inspect_image`` rejects the file; the filter
    is set once around the whole pool (warning filters are process-wide, not per thread)."""

    def one(p: Path) -> tuple[int, int, str] | DatasetError:
        try:
            return inspect_image(p, max_pixels)
        except DatasetError as err:
            return err

    results: dict[Path, tuple[int, int, str]] = {}
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=4) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        it = pool.map(one, paths)
        for path, res in tqdm(zip(paths, it, strict=False), total=len(paths), desc="validate", unit="img", leave=False,
                              disable=None):  # None: off where not a terminal (Dagster run logs, CI)
            if isinstance(res, DatasetError):
                if not skip_invalid:
                    raise res
                skipped.append({"path": str(path), "error": res.problem})
                log.warning("skipping %s", res)
            else:
                results[path] = res
    return results


# a pre-split ImageFolder's top folders, and the split each names
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _class_dirs(root: Path, skip_invalid: bool, skipped: list[dict]) -> dict[str, list[tuple[Path, str | None]]]:
    """{class name: its folders, each with the split it was given}. ROOT/<class>/ (no split given) or, for sets
    shipped pre-split, ROOT/<split>/<class>/ (``SPLIT_FOLDERS``)."""
    top: list[Path] = []
    for entry in _scandir(root):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            check_name(path)
            top.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            err = DatasetError(path, "image is not inside a class folder, so it has no label")
            if not skip_invalid:
                raise err
            skipped.append({"path": str(path), "error": err.problem})
    if not top:
        raise DatasetError(root, "no class folders found (expected ROOT/<class>/<image>)")
    if not {d.name.lower() for d in top} <= set(SPLIT_FOLDERS):
        return {d.name: [(d, None)] for d in top}
    # Pre-split layout: the classes are one level down, and each image keeps its folder's split.
    named = [SPLIT_FOLDERS[d.name.lower()] for d in top]
    if len(set(named)) < len(named):
        raise DatasetError(root, f"split folders {', '.join(d.name for d in top)} name one split twice")
    if "train" not in named:
        raise DatasetError(root, "pre-split layout without a train/ folder (expected ROOT/train/<class>/ beside "
                           "val/ or test/)")
    classes: dict[str, list[tuple[Path, str | None]]] = {}
    for split_dir in top:
        subdirs = [Path(e.path) for e in _scandir(split_dir) if e.is_dir() and not e.name.startswith(".")]
        if not subdirs:
            raise DatasetError(split_dir, "split folder has no class folders")
        for d in subdirs:
            check_name(d)
            classes.setdefault(d.name, []).append((d, SPLIT_FOLDERS[split_dir.name.lower()]))
    return dict(sorted(classes.items()))


def _read_imagefolder(root: Path, skip_invalid: bool, max_pixels: int | None = None) -> RawDataset:
    skipped: list[dict] = []
    class_dirs = _class_dirs(root, skip_invalid, skipped)
    per_class: dict[str, list[Path]] = {}
    given: dict[Path, str | None] = {}
    for name, dirs in class_dirs.items():
        for d, split in dirs:
            files = _walk_images(d)
            if not files:
                raise DatasetError(d, "class folder has no images")
            per_class.setdefault(name, []).extend(files)
            given.update(dict.fromkeys(files, split))
    if len(per_class) < 2:
        raise DatasetError(root, f"found 1 class ({next(iter(per_class))}); a classifier needs at least 2")

    info = _inspect_all([f for files in per_class.values() for f in files], skip_invalid, skipped, max_pixels)
    classes = list(per_class)
    samples = []
    for label, name in enumerate(classes):
        kept = [f for f in per_class[name] if f in info]
        if not kept:
            raise DatasetError(class_dirs[name][0][0], "class folder has no valid images")
        for f in kept:
            w, h, sha = info[f]
            samples.append(Sample(f.relative_to(root).as_posix(), label, w, h, sha, split=given[f]))
    return RawDataset(root, "imagefolder", classes, samples, skipped)


def _read_coco(root: Path, skip_invalid: bool, max_pixels: int | None = None) -> RawDataset:
    ann_path = root / "annotations.json"
    if not ann_path.is_file():
        raise DatasetError(ann_path, "COCO annotations file is missing")
    try:
        coco = json.loads(ann_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(ann_path, f"invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(ann_path, "not UTF-8 text") from None
    if not isinstance(coco, dict):
        raise DatasetError(ann_path, "top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(ann_path, f"missing or non-list {key!r} key")

    categories = sorted(coco["categories"], key=lambda c: c.get("id", 0))
    cat_index = {c["id"]: i for i, c in enumerate(categories) if "id" in c}
    if len(cat_index) != len(categories):
        raise DatasetError(ann_path, "every category needs an 'id'")
    images = {}
    for img in coco["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(ann_path, f"image entry needs 'id' and 'file_name': {img!r}")
        images[img["id"]] = img

    skipped: list[dict] = []
    paths = {}
    for img_id, img in images.items():
        path = root / "images" / img["file_name"]
        if not path.is_file():
            err = DatasetError(path, f"image file listed in annotations.json (image id {img_id}) is missing")
            if not skip_invalid:
                raise err
            skipped.append({"path": str(path), "error": err.problem})
            continue
        paths[img_id] = path
    info = _inspect_all(list(paths.values()), skip_invalid, skipped, max_pixels)
    for img_id, path in paths.items():  # the record's width and height must be the file's
        if path not in info:
            continue
        try:
            _check_declared_size(path, img_id, images[img_id], *info[path][:2])
        except DatasetError as err:
            if not skip_invalid:
                raise
            skipped.append({"path": str(path), "error": err.problem})
            log.warning("skipping %s", err)
            del info[path]

    boxes: dict[int, list[dict]] = {i: [] for i in paths}
    bad_images: set[int] = set()
    for ann in coco["annotations"]:
        ann_id = ann.get("id")
        img_id = ann.get("image_id")
        try:
            if img_id not in images:
                raise DatasetError(ann_path, f"annotation {ann_id} points at unknown image id {img_id!r}")
            if ann.get("category_id") not in cat_index:
                raise DatasetError(ann_path, f"annotation {ann_id} has unknown category id {ann.get('category_id')!r}")
            path = paths.get(img_id)
            if path not in info:
                continue  # its image was skipped above
            w, h, _ = info[path]
            check_box(path, ann_id, ann.get("bbox"), w, h)
        except DatasetError as err:
            if not skip_invalid:
                raise
            skipped.append({"path": err.path, "error": err.problem})
            bad_images.add(img_id)
            continue
        boxes[img_id].append({"bbox": [float(v) for v in ann["bbox"]], "category": cat_index[ann["category_id"]]})

    samples = []
    for img_id, path in paths.items():
        if path not in info or img_id in bad_images:
            continue
        w, h, sha = info[path]
        anns = boxes[img_id]
        # Image-level label for the classification stages: the class of the largest box.
        label = max(anns, key=lambda a: a["bbox"][2] * a["bbox"][3])["category"] if anns else None
        samples.append(Sample(path.relative_to(root).as_posix(), label, w, h, sha, anns))
    classes = [str(c.get("name", c["id"])) for c in categories]
    # the classes the listed images name (largest box each, before any skipping), as an ImageFolder with one
    # class folder is refused whatever its files hold
    largest: dict[object, dict] = {}
    for ann in coco["annotations"]:
        bbox = ann.get("bbox")
        if ann.get("category_id") not in cat_index or not isinstance(bbox, list) or len(bbox) != 4:
            continue
        area = bbox[2] * bbox[3] if all(isinstance(v, int | float) for v in bbox) else 0
        best = largest.get(ann.get("image_id"))
        if best is None or area > best["area"]:
            largest[ann.get("image_id")] = {"area": area, "category": cat_index[ann["category_id"]]}
    used = sorted({b["category"] for b in largest.values()})
    if len(used) < 2:
        names = ", ".join(classes[i] for i in used) or "none"
        raise DatasetError(ann_path, f"the images' largest boxes name {len(used)} class(es) ({names}); a classifier "
                           "needs at least 2 (an image's label is the category of its largest box)")
    return RawDataset(root, "coco", classes, samples, skipped, extra_files=["annotations.json"])


def _check_declared_size(path: Path, img_id: object, record: dict, width: int, height: int) -> None:
    """A COCO image record's ``width`` and ``height`` (when given) must be the decoded file's: boxes are drawn
    against them, so a record that lies about its image puts every box somewhere else."""
    if "width" not in record and "height" not in record:
        return
    declared = (record.get("width"), record.get("height"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in declared):
        raise DatasetError(path, f"annotations.json gives image id {img_id} width/height {declared[0]!r}x"
                           f"{declared[1]!r}; expected positive whole numbers")
    if declared != (width, height):
        raise DatasetError(path, f"annotations.json declares {declared[0]}x{declared[1]} for image id {img_id}, "
                           f"the file is {width}x{height}")
