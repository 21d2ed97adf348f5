"""An edge package loaded for inference: its engine (ONNX Runtime, or TensorRT built on this device), label
map, and the package's own resize."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitforge_edge.engines import open_engine


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # softmax probability per class
    version: str


class EdgeModel:
    """``folder`` holds a package (model.onnx, label_map.json, package.json) as the pipeline wrote it.
    ``engine_cache``: where TensorRT engines built here are kept (the state dir's ``engines/``)."""

    def __init__(self, folder: Path, version: str, threads: int | None = None, engine_cache: Path | None = None):
        self.folder, self.version = Path(folder), version
        self.spec = json.loads((self.folder / "package.json").read_text())
        labels = json.loads((self.folder / "label_map.json").read_text())
        self.classes = [labels[str(i)] for i in range(len(labels))]
        self.size = int(self.spec["input"]["shape"][1])
        self.engine = open_engine(self.folder, self.spec, self.size, threads, engine_cache)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images at the package's size -> logits."""
        return self.engine.run(images)

    def prepare(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> (1, S, S, 3) uint8, resized as the package states (PIL bilinear, RGB)."""
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)[None]

    def predict(self, data: bytes) -> Prediction:
        return self.predict_prepared(self.prepare(data))

    def predict_prepared(self, image: np.ndarray) -> Prediction:
        z = self.logits(image)[0].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        return Prediction(self.classes[int(p.argmax())], {c: float(v) for c, v in zip(self.classes, p, strict=True)},
                          self.version)
