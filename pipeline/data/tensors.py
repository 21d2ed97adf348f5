"""Load a versioned dataset into memory as uint8 tensors.

Small sets (the digits, a few thousand photos) fit in memory, which keeps the
training loops deterministic and free of loader workers.

Two views of one version: ``load_split`` gives the labelled images of a split
(the supervised stages: supernet, search, fine-tuning, export), ``load_images``
gives every image, labelled or not, with no labels (MAE pre-training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.manifest import UNLABELED, load_manifest


def load_split(folder: Path, split: str | None, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, S, S), labels int64 (N,)) for ``split`` (None: train + val + test).

    Files without a label (COCO images with no box, and the unlabeled images) are left out.
    """
    if split == UNLABELED:
        raise ValueError(f"load_split({split!r}): unlabeled images have no labels; use load_images")
    manifest = load_manifest(folder)
    files = [f for f in (manifest.split(split) if split else manifest.labelled_files()) if f["label"] is not None]
    labels = torch.tensor([f["label"] for f in files], dtype=torch.long)
    return _decode(Path(folder), files, img_size), labels


def load_images(folder: Path, img_size: int) -> torch.Tensor:
    """Every image of the version as uint8 (N, 3, S, S): every split and the unlabeled ones, labels unused."""
    return _decode(Path(folder), load_manifest(folder).files, img_size)


def _decode(folder: Path, files: list[dict], img_size: int) -> torch.Tensor:
    images = np.empty((len(files), img_size, img_size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(folder / f["path"]) as img:
            img = img.convert("RGB").resize((img_size, img_size), Image.Resampling.BILINEAR)
            images[i] = np.asarray(img)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalized per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s
