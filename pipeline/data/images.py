"""Decode-check one image file with Pillow."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.data.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# A truncated file must fail, not decode to a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def check_name(path: Path) -> None:
    """File names must be valid UTF-8: they end up in JSON manifests and MLflow tags."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(path, "file name is not valid UTF-8") from None


def inspect_image(path: Path) -> tuple[int, int, str]:
    """Fully decode ``path``; return (width, height, sha256 of the bytes) or raise DatasetError."""
    check_name(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(path, f"cannot read file ({err.strerror or err})") from None
    if not data:
        raise DatasetError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()  # decodes every pixel: truncated data raises here
            width, height = img.size
    except UnidentifiedImageError:
        raise DatasetError(path, "not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(path, f"corrupt image ({err})") from None
    if width <= 0 or height <= 0:
        raise DatasetError(path, f"image has no pixels ({width}x{height})")
    return width, height, hashlib.sha256(data).hexdigest()


def check_box(path: Path, ann_id: object, box: object, width: int, height: int) -> None:
    """A COCO box [x, y, w, h] must be finite, of positive size and inside the image."""
    where = f"annotation {ann_id}"
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise DatasetError(path, f"{where}: bbox must be a list of 4 numbers, got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DatasetError(path, f"{where}: bbox has a non-finite value {box!r}")
    if w <= 0 or h <= 0:
        raise DatasetError(path, f"{where}: bbox has non-positive size (w={w:g}, h={h:g})")
    if x < 0 or y < 0 or x + w > width + 1e-6 or y + h > height + 1e-6:
        raise DatasetError(path, f"{where}: bbox {box!r} lies outside the {width}x{height} image")
