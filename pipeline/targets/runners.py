"""One runner interface for every engine: polygraphy's runners.

CPU targets get polygraphy's ``OnnxrtRunner`` over an ONNX Runtime session with
the target's thread count; TensorRT targets get ``TrtRunner`` over an engine built
by ``EngineFromNetwork`` with ``CreateConfig(fp16=..., int8=...)`` (int8 calibrated
through polygraphy's ``Calibrator``), or, when an engine cache folder is given and holds
an engine for the same key, deserialized by ``EngineFromBytes``. Callers only ``activate``/``infer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export.onnx import INPUT_NAME
from pipeline.targets.schema import Target
from pipeline.weights import sha256_file

log = logging.getLogger(__name__)


def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def trt_identity() -> tuple[str, str]:
    """This machine's TensorRT version and GPU (name and compute capability): an engine runs only where both match."""
    import tensorrt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return str(tensorrt.__version__), f"{torch.cuda.get_device_name(0)} sm_{major}{minor}"


def engine_cache_key(onnx_path: Path, target: Target, input_size: int,
                     calibration: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Everything an engine depends on: TensorRT version, GPU, the ONNX's sha256, and how it was built
    (precision, profile batch and size, int8 calibration data). Any change gives another key, hence a rebuild."""
    trt_version, gpu = trt_identity()
    key: dict[str, Any] = {"tensorrt": trt_version, "gpu": gpu, "onnx_sha256": sha256_file(onnx_path),
                           "precision": target.precision, "batch": target.batch_size, "size": input_size}
    if target.precision == "int8" and calibration is not None:
        h = hashlib.sha256()
        for batch in calibration:
            for name in sorted(batch):
                h.update(name.encode())
                h.update(np.ascontiguousarray(batch[name]).tobytes())
        key["calibration_sha256"] = h.hexdigest()
    return key


def trt_engine(onnx_path: Path, target: Target, input_size: int,
               calibration: Sequence[dict[str, np.ndarray]] | None = None, cache_dir: Path | None = None):
    """A lazily built TensorRT engine (polygraphy loader). With ``cache_dir``, an engine already built for the
    same key (``engine_cache_key``) is deserialized from there instead of rebuilt, and a new build is saved there."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        EngineFromBytes,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
    )

    path, key = None, {}
    if cache_dir is not None:
        key = engine_cache_key(onnx_path, target, input_size, calibration)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        path = cache_dir / f"{digest}.engine"
        if path.is_file():
            log.info("TensorRT engine cache hit: %s", path)
            return EngineFromBytes(BytesFromPath(str(path)))

    b = target.batch_size
    shape = (input_size, input_size, 3)
    profile = Profile().add(INPUT_NAME, min=(1, *shape), opt=(b, *shape), max=(b, *shape))
    calibrator = None
    if target.precision == "int8":
        if calibration is None:
            raise ValueError(f"target {target.name}: int8 needs calibration data")
        calibrator = Calibrator(calibration, cache=str(path.with_suffix(".calib")) if path else None)
    config = CreateConfig(fp16=target.precision == "fp16", int8=target.precision == "int8",
                          calibrator=calibrator, profiles=[profile])
    engine = EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config)
    return engine if path is None else _cached_build(engine, path, key)


def _cached_build(engine: Callable[[], Any], path: Path, key: dict[str, Any]) -> Callable[[], Any]:
    """A loader that builds ``engine`` and saves it to ``path`` under a temporary name, then renames it:
    a build killed midway leaves no half engine under its key."""
    from polygraphy.backend.trt import SaveEngine

    def build_and_cache():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        built = SaveEngine(engine, str(tmp))()
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(key, indent=1))  # what the engine is, for people
        log.info("TensorRT engine built and cached: %s", path)
        return built

    return build_and_cache


def make_runner(onnx_path: Path, target: Target, *, input_size: int,
                calibration: Sequence[dict[str, np.ndarray]] | None = None, engine_cache_dir: Path | None = None):
    """A polygraphy runner for ``target``; use as ``with runner: runner.infer({...})``."""
    if target.runtime == "onnxruntime":
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(ort_session(onnx_path, target.threads), name=f"ort-{target.name}")
    if target.runtime == "tensorrt":
        from polygraphy.backend.trt import TrtRunner

        return TrtRunner(trt_engine(onnx_path, target, input_size, calibration, engine_cache_dir),
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
