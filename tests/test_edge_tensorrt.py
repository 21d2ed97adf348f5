"""TensorRT packages on a device: the engine is built there from the ONNX, cached, and proven before it serves.

This machine has no GPU, so ``StandInTensorRT`` takes the place of ``vitforge_edge.engines.TensorRT`` (the
one class that calls TensorRT): its "engine" is the ONNX behind a header naming the TensorRT version, GPU
and profile batch it was built for, and loading refuses an engine built for another version or GPU, as
TensorRT does. Everything around it is real: the cache, the agent against a real MLflow server, the
self-check and the serving holder. ``test_real_tensorrt_engine_matches_onnxruntime`` runs TensorRT itself
(``pytest -m trt``, where it is installed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import EDGE_MODEL, register
from vitforge_edge import engines
from vitforge_edge.agent import EDGE_FILES, Agent
from vitforge_edge.checks import Rules, self_check
from vitforge_edge.model import EdgeModel
from vitforge_edge.registry import MlflowRest
from vitforge_edge.serve import ModelHolder
from vitforge_edge.store import Store

import mlflow
from pipeline.weights import sha256_file

FLEET = "jetsons"


class StandInTensorRT:
    """Builds and loads "engines" as TensorRT would, minus the GPU; counts builds."""

    version_, gpu_ = "10.3.0", "NVIDIA Jetson AGX Orin (8.7)"
    builds = 0

    def version(self) -> str:
        return self.version_

    def gpu(self) -> str:
        return self.gpu_

    def build(self, onnx_path: Path, input_name: str, precision: str, batch: int, size: int) -> bytes:
        type(self).builds += 1
        header = {"tensorrt": self.version(), "gpu": self.gpu(), "batch": batch, "input": input_name}
        return json.dumps(header).encode() + b"\n" + Path(onnx_path).read_bytes()

    def load(self, engine: bytes):
        header, onnx = engine.split(b"\n", 1)
        meta = json.loads(header)
        if (meta["tensorrt"], meta["gpu"]) != (self.version(), self.gpu()):
            raise RuntimeError("the engine was built by another TensorRT version or for another GPU")
        session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])

        def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            x = feed[meta["input"]]
            if not 1 <= len(x) <= meta["batch"]:  # TensorRT refuses a shape outside the optimization profile
                raise ValueError(f"batch {len(x)} outside the engine's profile 1..{meta['batch']}")
            return {"logits": session.run(None, {meta["input"]: x})[0]}

        return infer


@pytest.fixture
def trt(monkeypatch):
    """A fresh stand-in in place of the device's TensorRT."""
    stand_in = type("StandIn", (StandInTensorRT,), {"builds": 0})
    monkeypatch.setattr(engines, "TensorRT", stand_in)
    return stand_in


def as_tensorrt(pkg, folder: Path, precision: str = "fp16", batch: int = 4):
    """The package re-targeted at a Jetson: the same ONNX, a ``tensorrt`` target spec in package.json."""
    shutil.copytree(pkg.folder, folder)
    spec = json.loads((folder / "package.json").read_text())
    spec["target_spec"].update(runtime="tensorrt", device="jetson-orin", precision=precision, batch_size=batch)
    (folder / "package.json").write_text(json.dumps(spec))
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != "package.json"}
    return dataclasses.replace(pkg, folder=folder, target="orin-trt-fp16", files_sha256=files)


@pytest.fixture(scope="module")
def trt_package(packages, tmp_path_factory):
    return as_tensorrt(packages["good"], tmp_path_factory.mktemp("trt") / "pkg")


def test_engine_is_built_once_then_loaded_from_the_cache(trt, trt_package, packages, tmp_path):
    cache = tmp_path / "engines"
    first = EdgeModel(trt_package.folder, "1", engine_cache=cache)
    assert trt.builds == 1 and first.engine.description["engine_cache"] == "built"
    assert first.engine.description["runtime"] == "tensorrt 10.3.0"
    assert first.engine.description["gpu"] == trt.gpu_ and first.engine.description["precision"] == "fp16"
    again = EdgeModel(trt_package.folder, "1", engine_cache=cache)
    assert trt.builds == 1 and again.engine.description["engine_cache"] == "hit"
    assert [p.suffix for p in sorted(cache.iterdir())] == [".engine", ".json"]
    # the probe set (more images than the engine's batch of 4) runs in chunks, and matches ONNX Runtime
    probe = np.load(trt_package.folder / "probe.npz")["images"]
    assert len(probe) > 4
    cpu = EdgeModel(packages["good"].folder, "1")
    assert np.abs(again.logits(probe) - cpu.logits(probe)).max() < 1e-5


def test_another_tensorrt_version_or_gpu_rebuilds_rather_than_load_a_stale_engine(trt, trt_package, tmp_path):
    cache = tmp_path / "engines"
    EdgeModel(trt_package.folder, "1", engine_cache=cache)
    trt.version_ = "10.4.1"  # the device's TensorRT was upgraded
    upgraded = EdgeModel(trt_package.folder, "1", engine_cache=cache)
    assert trt.builds == 2 and upgraded.engine.description["engine_cache"] == "built"
    trt.gpu_ = "NVIDIA Jetson Orin Nano (8.7)"  # the state dir moved to another board
    EdgeModel(trt_package.folder, "1", engine_cache=cache)
    assert trt.builds == 3 and len(list(cache.glob("*.engine"))) == 3
    keys = [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]
    agx = StandInTensorRT.gpu_
    assert {(k["tensorrt"], k["gpu"]) for k in keys} == {("10.3.0", agx), ("10.4.1", agx), ("10.4.1", trt.gpu_)}


def test_a_cached_engine_that_does_not_load_is_rebuilt(trt, trt_package, tmp_path):
    cache = tmp_path / "engines"
    EdgeModel(trt_package.folder, "1", engine_cache=cache)
    engine = next(cache.glob("*.engine"))
    engine.write_bytes(engine.read_bytes()[:40])  # truncated, as by a full disk
    model = EdgeModel(trt_package.folder, "1", engine_cache=cache)
    assert trt.builds == 2 and model.engine.description["engine_cache"] == "built"
    assert model.logits(np.zeros((1, model.size, model.size, 3), np.uint8)).shape == (1, 10)
    assert not list(cache.glob(".*.tmp"))


def test_an_int8_tensorrt_package_is_rejected_here_with_the_reason(trt_package, tmp_path, monkeypatch):
    class NoCalibration(StandInTensorRT):
        build = engines.TensorRT.build  # the real build's own refusal, before it would touch TensorRT

    monkeypatch.setattr(engines, "TensorRT", NoCalibration)
    folder = tmp_path / "int8"
    pkg = as_tensorrt(trt_package, folder, precision="int8")
    res = self_check(folder, "9", {f: sha256_file(folder / f) for f in EDGE_FILES}, Rules(warmup=1, runs=4),
                     engine_cache=tmp_path / "engines")
    assert not res.ok and not res.integrity_failed
    assert "int8 TensorRT engine is not built on the device" in res.reasons[0], pkg


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_a_device_without_tensorrt_rejects_a_tensorrt_package(trt_package, tmp_path):
    res = self_check(trt_package.folder, "9", {f: sha256_file(trt_package.folder / f) for f in EDGE_FILES},
                     Rules(warmup=1, runs=4), engine_cache=tmp_path / "engines")
    assert not res.ok and "TensorRT, which is not installed here" in res.reasons[0]


def test_agent_builds_the_engine_proves_it_and_serve_reuses_it(trt, server, packages, trt_package, tmp_path):
    uri, _ = server
    client = mlflow.MlflowClient(uri)
    version = register(uri, trt_package)
    cpu_version = register(uri, packages["good2"])
    client.set_registered_model_alias(EDGE_MODEL, f"fleet-{FLEET}", cpu_version)
    store_dir = tmp_path / "orin-1"
    agent = Agent(MlflowRest(uri), EDGE_MODEL, FLEET, "orin-1", store_dir)
    assert agent.poll_once().state == "active"  # an ONNX Runtime version serves first
    assert trt.builds == 0

    client.set_registered_model_alias(EDGE_MODEL, f"fleet-{FLEET}", version)
    report = agent.poll_once()
    assert report.state == "active" and report.serving == version, report.reasons
    assert report.check.agreement == 1.0 and report.check.p50_ms > 0
    engine = json.loads(report.tags()["engine"])
    assert engine["engine_cache"] == "built" and engine["runtime"] == "tensorrt 10.3.0"
    assert engine["onnx_sha256"] == sha256_file(trt_package.folder / "model.onnx")
    assert trt.builds == 1
    runs = client.search_runs([client.get_experiment_by_name(f"fleet-{FLEET}").experiment_id],
                              filter_string="tags.device_id = 'orin-1' and tags.state = 'active'")
    assert any(json.loads(r.data.tags["engine"] or "{}").get("engine_cache") == "built" for r in runs)

    holder = ModelHolder(Store(store_dir))  # what `vitforge-edge serve` does: the engine proven is the one served
    assert holder.model.version == version and holder.model.engine.description["engine_cache"] == "hit"
    assert trt.builds == 1


@pytest.mark.trt
def test_real_tensorrt_engine_matches_onnxruntime(packages, tmp_path):
    pkg = as_tensorrt(packages["good"], tmp_path / "pkg", precision="fp32")
    model = EdgeModel(pkg.folder, "1", engine_cache=tmp_path / "engines")
    assert model.engine.description["engine_cache"] == "built"
    probe = np.load(pkg.folder / "probe.npz")["images"]
    cpu = EdgeModel(packages["good"].folder, "1")
    assert (model.logits(probe).argmax(-1) == cpu.logits(probe).argmax(-1)).mean() >= 0.99
    assert EdgeModel(pkg.folder, "1", engine_cache=tmp_path / "engines").engine.description["engine_cache"] == "hit"
