"""ONNX export of a model as it ships: uint8 RGB images in, logits out.

The graph takes ``uint8`` images (N, H, W, 3) at the model's input size and does
the scaling and normalization itself, so no device re-implements preprocessing.
Modelled on timm's ``utils/onnx.py``: a library function with typed keywords.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class EdgeModel(nn.Module):
    """uint8 (N, H, W, 3) -> float logits: permute, scale to [0, 1], normalize, classify."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (N, 3, H, W)
        return self.model((x - self.mean) / self.std)  # (N, num_classes)


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_size: int,
    mean: list[float],
    std: list[float],
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    check: bool = True,
) -> Path:
    """Write ``model`` wrapped in ``EdgeModel`` to ``path``; return the path."""
    import onnx

    edge = EdgeModel(model, mean, std).eval()
    example = torch.zeros(batch_size, input_size, input_size, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        # timm's shape asserts trace to constants: exact for the fixed input size the package states
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(edge, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    if check:
        onnx.checker.check_model(str(path))
    return path
