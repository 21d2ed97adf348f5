"""Demo data that ships with a package: scikit-learn's 1,797 handwritten digit scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(dest: Path, image_size: int = 32) -> int:
    """Write the digits as DEST/<digit>/digit_<index>.png (RGB, upscaled); return the image count.

    Deterministic: the same files with the same bytes on every run.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    dest = Path(dest)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=False)):
        folder = dest / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        gray = (pixels / 16.0 * 255.0).round().astype(np.uint8)  # values are 0..16
        img = Image.fromarray(gray, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        img.convert("RGB").save(folder / f"digit_{i:04d}.png", optimize=False)
    return len(digits.images)
