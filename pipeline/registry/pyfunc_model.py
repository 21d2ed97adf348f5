"""The registered model as MLflow's pyfunc: uint8 images in, labels and probabilities out.

MLflow "models from code": ``register_package`` logs this file with the version (``python_model=<this file>``),
so loading a version needs MLflow, ONNX Runtime, numpy and pandas, not vitforge. Its artifacts are the edge
package's ``model.onnx`` (uint8 NHWC in, normalization inside), ``label_map.json`` and ``package.json``.

    mlflow.pyfunc.load_model("models:/vitforge-digits@champion-cpu-ort-fp32").predict(images)
    # images: uint8 (N, size, size, 3), RGB, resized as package.json's input.resize states
    # -> DataFrame: label (the class name), probability (its softmax), probabilities (one per class, in the
    #    label map's order)

Not imported by the pipeline: MLflow runs it when a version is loaded.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

import mlflow


class EdgeClassifier(PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(context.artifacts["model"], providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        with open(context.artifacts["label_map"], encoding="utf-8") as f:
            label_map = json.load(f)
        self.labels = [label_map[str(i)] for i in range(len(label_map))]

    # np.ndarray: a hint MLflow takes as "no schema from the hint" (the logged signature holds it), so loading a
    # version prints no warning about missing type hints
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:  # one image
            images = images[None]
        logits = self.session.run(None, {self.input: images})[0].astype(np.float64)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)
        best = probs.argmax(-1)
        return pd.DataFrame({"label": [self.labels[i] for i in best],
                             "probability": probs[np.arange(len(probs)), best],
                             "probabilities": list(probs)})


mlflow.models.set_model(EdgeClassifier())
