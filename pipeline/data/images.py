"""Decode-check one image file with Pillow."""

from __future__ import annotations

import hashlib
import io
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


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC; always these 12 bytes
GIF_TRAILER = b";"


def inspect_image(path: Path, max_pixels: int | None = None) -> tuple[int, int, str]:
    """Fully decode ``path`` (every frame); return (width, height, sha256 of the bytes) or raise DatasetError.

    ``max_pixels``: the most pixels the file may decode to (width x height x frames), checked from the header
    before anything is decoded. Pillow's own decompression-bomb check (its error, and its warning where the
    caller turns warnings of that class into errors, as ``readers`` does) is a DatasetError too. A file that
    Pillow decodes in part is truncated: a PNG must end in its IEND chunk with every chunk's checksum whole, a
    GIF in its trailer, a JPEG must reach its end-of-image marker.
    """
    check_name(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(path, f"cannot read file ({err.strerror or err})") from None
    if not data:
        raise DatasetError(path, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            frames = int(getattr(img, "n_frames", 1) or 1)
            if max_pixels is not None and width * height * frames > max_pixels:
                raise DatasetError(path, f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
                                   + f" = {width * height * frames} pixels, over dataset.max_pixels {max_pixels} "
                                   "(a decompression bomb?)")
            for i in range(frames):  # decodes every pixel of every frame: truncated data raises here
                img.seek(i)
                img.load()
            fmt = img.format
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DatasetError(path, f"decompression bomb ({_first_line(err)})") from None
    except UnidentifiedImageError:
        raise DatasetError(path, "not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DatasetError(path, f"corrupt image ({_first_line(err)})") from None
    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()  # every chunk's CRC, to the end of the file
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise DatasetError(path, f"corrupt image: truncated or damaged PNG ({_first_line(err)})") from None
    if width <= 0 or height <= 0:
        raise DatasetError(path, f"image has no pixels ({width}x{height})")
    if (fmt == "PNG" and PNG_END not in data) or (fmt == "GIF" and not data.endswith(GIF_TRAILER)) \
            or (fmt in ("JPEG", "MPO") and not _jpeg_reaches_its_end(data)):
        raise DatasetError(path, f"truncated image: the {fmt} file ends before its end marker (it decodes in part)")
    return width, height, hashlib.sha256(data).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _jpeg_reaches_its_end(data: bytes) -> bool:
    """Whether the JPEG's segments and scans run into an end-of-image marker (EOI) before the data ends.

    Segments are skipped by their length (an EXIF thumbnail's own EOI inside APP1 does not count); scan data
    runs to the next marker that is neither a stuffed 0xFF00 nor a restart marker. Every step moves forward.
    """
    n, i = len(data), 2  # after SOI
    if not data.startswith(b"\xff\xd8"):
        return False
    while i + 1 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # restart markers and TEM have no length
            i += 2
            continue
        if i + 4 > n:
            return False
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return False
        i += 2 + length
        if marker == 0xDA:  # entropy-coded data follows the scan header
            while True:
                j = data.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return False
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    i = j + 2
                    continue
                i = j
                break
    return False


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
