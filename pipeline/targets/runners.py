"""One runner interface for every engine: polygraphy's runners.

CPU targets get polygraphy's ``OnnxrtRunner`` over an ONNX Runtime session with
the target's thread count; TensorRT targets get ``TrtRunner`` over an engine built
by ``EngineFromNetwork`` with ``CreateConfig(fp16=..., int8=...)`` (int8 calibrated
through polygraphy's ``Calibrator``). Callers only ``activate``/``infer``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export.onnx import INPUT_NAME
from pipeline.targets.schema import Target


def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def trt_engine(onnx_path: Path, target: Target, input_size: int,
               calibration: Iterable[dict[str, np.ndarray]] | None = None, cache: Path | None = None):
    """A lazily built TensorRT engine (polygraphy loader), cached to ``cache`` when given."""
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SaveEngine,
    )

    b = target.batch_size
    shape = (input_size, input_size, 3)
    profile = Profile().add(INPUT_NAME, min=(1, *shape), opt=(b, *shape), max=(b, *shape))
    calibrator = None
    if target.precision == "int8":
        if calibration is None:
            raise ValueError(f"target {target.name}: int8 needs calibration data")
        calibrator = Calibrator(calibration, cache=str(cache.with_suffix(".calib")) if cache else None)
    config = CreateConfig(fp16=target.precision == "fp16", int8=target.precision == "int8",
                          calibrator=calibrator, profiles=[profile])
    engine = EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config)
    return SaveEngine(engine, str(cache)) if cache else engine


def make_runner(onnx_path: Path, target: Target, *, input_size: int,
                calibration: Iterable[dict[str, np.ndarray]] | None = None, engine_cache: Path | None = None):
    """A polygraphy runner for ``target``; use as ``with runner: runner.infer({...})``."""
    if target.runtime == "onnxruntime":
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(ort_session(onnx_path, target.threads), name=f"ort-{target.name}")
    if target.runtime == "tensorrt":
        from polygraphy.backend.trt import TrtRunner

        return TrtRunner(trt_engine(onnx_path, target, input_size, calibration, engine_cache),
                         name=f"trt-{target.name}")
    raise ValueError(f"target {target.name}: unknown runtime {target.runtime!r}")


def engine_description(target: Target) -> dict[str, Any]:
    """How a figure was measured: engine and version, precision, threads, batch, machine."""
    desc: dict[str, Any] = {"target": target.name, "runtime": target.runtime, "device": target.device,
                            "precision": target.precision, "threads": target.threads,
                            "batch_size": target.batch_size, "cpu_model": cpu_model(),
                            "machine": platform.machine()}
    if target.runtime == "onnxruntime":
        import onnxruntime

        desc["engine_version"] = f"onnxruntime {onnxruntime.__version__}"
    else:
        import tensorrt  # noqa: F401  (only where it is installed)

        desc["engine_version"] = f"tensorrt {tensorrt.__version__}"
    return desc


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
