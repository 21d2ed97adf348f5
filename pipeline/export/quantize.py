"""Static int8 quantization (QDQ) with ONNX Runtime, calibrated on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.export.onnx import INPUT_NAME


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a uint8 (N, H, W, 3) array."""

    def __init__(self, images: np.ndarray, batch: int = 1):
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        nxt = next(self._batches, None)
        return None if nxt is None else {INPUT_NAME: nxt}


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> Path:
    """QDQ int8 weights and activations (per-channel weights), calibrated on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.dtype != np.uint8 or calibration.ndim != 4 or calibration.shape[-1] != 3:
        raise ValueError(f"calibration images must be uint8 (N, H, W, 3), got {calibration.dtype} {calibration.shape}")
    prepped = int8_path.with_name(int8_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(int8_path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"], extra_options={"ActivationSymmetric": True})
    prepped.unlink(missing_ok=True)
    return int8_path
