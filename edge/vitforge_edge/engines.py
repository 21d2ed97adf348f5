"""The engine a package runs on, on this device: ONNX Runtime, or a TensorRT engine built here.

A package ships ONNX. For a TensorRT target (``target_spec.runtime: tensorrt`` in ``package.json``) an
engine only runs on the TensorRT version and GPU that built it, so the device builds its own from the
ONNX (through polygraphy's loaders, the same ones the pipeline uses) and caches it in the state dir's
``engines/``. The cache key holds everything that makes an engine: the ONNX's sha256, precision, the
batch and input size of its optimization profile, the TensorRT version and the GPU (name and compute
capability). A device whose TensorRT or GPU changes computes another key and rebuilds instead of loading
a stale engine; an engine file that does not deserialize is rebuilt and replaced. Cache writes are
tmp + fsync + rename, so a kill mid-write leaves no half engine under its key.

``TensorRT`` is the only class that touches ``tensorrt``: tests here stand another in for it (this
machine has no GPU) and check everything around it; ``pytest -m trt`` runs the real one where it exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The package cannot run on this device's engine (no TensorRT here, an unsupported precision)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class OrtEngine:
    """ONNX Runtime on the CPU, at the target's thread count."""

    def __init__(self, onnx_path: Path, input_name: str, output_name: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = input_name, output_name
        self.description = {"runtime": f"onnxruntime {ort.__version__}", "threads": threads}

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images)})[0]


class TensorRT:
    """This device's TensorRT, through polygraphy: its version, its GPU, and building and loading engines."""

    def version(self) -> str:
        try:
            import tensorrt
        except ImportError as err:
            raise EngineError(f"this package is for TensorRT, which is not installed here ({err})") from None
        return str(tensorrt.__version__)

    def gpu(self) -> str:
        """The GPU an engine is built for: a Jetson's board model, or nvidia-smi's name and compute capability."""
        board = Path("/proc/device-tree/model")
        if board.is_file():
            return board.read_text(errors="replace").strip("\x00 \n")
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
                             check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def build(self, onnx_path: Path, input_name: str, precision: str, batch: int, size: int) -> bytes:
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

        if precision == "int8":  # calibration needs data the package does not ship
            raise EngineError("an int8 TensorRT engine is not built on the device: the package ships no "
                              "calibration cache")
        shape = (size, size, 3)
        profile = Profile().add(input_name, min=(1, *shape), opt=(batch, *shape), max=(batch, *shape))
        config = CreateConfig(fp16=precision == "fp16", profiles=[profile])
        return bytes(EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config)())

    def load(self, engine: bytes) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """An activated runner's ``infer``; fails on bytes that are not an engine for this TensorRT and GPU."""
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runner = TrtRunner(EngineFromBytes(engine))
        runner.activate()
        return runner.infer


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    precision: str
    batch: int
    size: int
    tensorrt: str
    gpu: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:24]


def cached_engine(backend: TensorRT, cache_dir: Path, key: EngineKey, onnx_path: Path,
                  input_name: str) -> tuple[Callable, dict[str, Any]]:
    """The engine for ``key``: loaded from ``cache_dir`` when there, else built, cached and loaded.
    Returns the runner's ``infer`` and how it was obtained (cache hit or build seconds)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key.digest()}.engine"
    how: dict[str, Any] = {"engine_file": path.name, **key.__dict__}
    if path.is_file():
        try:
            infer = backend.load(path.read_bytes())
            return infer, how | {"engine_cache": "hit"}
        except Exception as err:  # noqa: BLE001  (a truncated or foreign file: rebuild it, say so)
            log.warning("cached engine %s does not load (%s): rebuilding", path.name, err)
    t0 = time.perf_counter()
    data = backend.build(onnx_path, input_name, key.precision, key.batch, key.size)
    build_s = time.perf_counter() - t0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(key.__dict__, indent=1))  # what the engine is, for people
    log.info("built TensorRT engine %s in %.1f s", path.name, build_s)
    return backend.load(data), how | {"engine_cache": "built", "build_s": round(build_s, 3)}


class TrtEngine:
    """A TensorRT engine for the package's ONNX, built on this device or taken from its cache."""

    def __init__(self, onnx_path: Path, input_name: str, output_name: str, target: dict[str, Any], size: int,
                 cache_dir: Path | None, backend: TensorRT | None = None):
        if cache_dir is None:
            raise EngineError("a TensorRT package needs an engine cache folder (the state dir's engines/)")
        backend = backend or TensorRT()
        self.batch = int(target.get("batch_size", 1))
        key = EngineKey(file_sha256(onnx_path), str(target.get("precision", "fp32")), self.batch, size,
                        backend.version(), backend.gpu())
        self.infer, how = cached_engine(backend, cache_dir, key, onnx_path, input_name)
        self.input_name, self.output_name = input_name, output_name
        self.description = {"runtime": f"tensorrt {key.tensorrt}", **how}

    def run(self, images: np.ndarray) -> np.ndarray:
        """Any number of images, in chunks of at most the engine profile's batch."""
        chunks = [images[i:i + self.batch] for i in range(0, len(images), self.batch)]
        outs = [np.asarray(self.infer({self.input_name: np.ascontiguousarray(c)})[self.output_name]) for c in chunks]
        return np.concatenate(outs).astype(np.float32, copy=False)


def open_engine(folder: Path, spec: dict[str, Any], size: int, threads: int | None,
                engine_cache: Path | None) -> OrtEngine | TrtEngine:
    """The engine the package's target names: ONNX Runtime, or TensorRT built here (cached)."""
    target = spec.get("target_spec", {})
    onnx_path, inp, out = folder / "model.onnx", spec["input"]["name"], spec["output"]
    runtime = target.get("runtime", "onnxruntime")
    if runtime == "onnxruntime":
        return OrtEngine(onnx_path, inp, out, threads or int(target.get("threads", 1)))
    if runtime == "tensorrt":
        return TrtEngine(onnx_path, inp, out, target, size, engine_cache)
    raise EngineError(f"package.json: target_spec.runtime {runtime!r} is not one this device runs")
