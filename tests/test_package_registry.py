"""Export, parity, latency gates and MLflow registration of a tiny fine-tuned model."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import DATASET_VERSION, git

import mlflow
from pipeline.data import load_manifest
from pipeline.export import package as package_mod
from pipeline.finetune.train import finetune
from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.registry.gates import parity_gate
from pipeline.registry.mlflow_registry import ProvenanceError, alias, load_registered
from pipeline.stages.common import model_name
from pipeline.stages.package import run_package
from pipeline.targets import load_target
from pipeline.tracking import Tracker


def package(shipped, target: str, *, root: Path | None = None, weights: Path | None = None,
            allow_dirty: bool = False, **tag_kw):
    project, data, ft = shipped
    root = root or project
    params = load_params(root)
    return run_package(root, params, Tracker.from_params(params, root),
                       {"tracked_dir": str(data), "version": DATASET_VERSION}, {"weights": str(weights or ft.weights)},
                       {"latency_mape": 0.04}, target, tags={"dagster_run_id": "run-1", **tag_kw},
                       allow_dirty=allow_dirty)


def gate(res, name: str) -> dict:
    return next(g for g in res.gates if g["name"] == name)


def constant_head_weights(shipped, out: Path) -> Path:
    """The fine-tuned weights with a head that always answers class 0: a real, exportable, much worse model."""
    from pipeline.weights import load_weights, save_weights

    _, _, ft = shipped
    state, meta = load_weights(ft.weights)
    [w] = [k for k in state if k.endswith("head.weight")]
    [b] = [k for k in state if k.endswith("head.bias")]
    state[w] = torch.zeros_like(state[w])
    state[b] = torch.zeros_like(state[b])
    state[b][0] = 1.0
    return save_weights(out, state, meta)


def versions(shipped) -> list:
    root, data, _ = shipped
    params = load_params(root)
    mlflow.set_tracking_uri(Tracker.from_params(params, root).tracking_uri)
    try:
        return mlflow.MlflowClient().search_model_versions(f"name='{model_name(root, params, data)}'")
    except mlflow.exceptions.MlflowException:
        return []


def test_fp32_package_parity_tags_alias_and_load_back(shipped):
    res = package(shipped, "cpu-ort-fp32")
    assert res.passed and res.registered_version is not None
    par = res.package["parity"]
    assert par["max_abs_diff"] < 1e-4 and par["top1_agreement"] == 1.0
    assert par["engine_test_top1"] == pytest.approx(par["torch_test_top1"])
    folder = res.package["folder"]
    assert folder == "runs/package/cpu-ort-fp32"  # recorded relative to the project root
    folder = shipped[0] / folder
    files = json.loads(open(f"{folder}/package.json").read())
    assert set(files["files_sha256"]) >= {"model.onnx", "weights.safetensors", "label_map.json", "probe.npz"}
    probe = np.load(f"{folder}/probe.npz")
    assert probe["images"].dtype == np.uint8 and probe["images"].shape[1:] == (16, 16, 3)
    assert probe["expected"].shape == (len(probe["images"]), 10)
    ort_logits = package_mod.run_engine(Path(folder) / "model.onnx", load_target(
        PACKAGE_ROOT / "infra" / "targets" / "cpu-ort-fp32.yaml"), probe["images"], 16)
    assert np.abs(ort_logits - probe["expected"]).max() < 1e-4  # the engine reproduces the shipped logits
    assert json.loads(open(f"{folder}/label_map.json").read()) == {str(i): str(i) for i in range(10)}
    assert files["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", 16, 16, 3],
                              "resize": "PIL bilinear, RGB, to size x size"}

    client = mlflow.MlflowClient()
    name = res.registered_model
    mv = client.get_model_version_by_alias(name, alias("candidate", "cpu-ort-fp32"))
    assert str(mv.version) == res.registered_version
    for tag in ("target", "arch", "dataset_version", "git_sha", "dagster_run_id", "params_hash", "latency_p50_ms",
                "latency_p99_ms", "parity_max_abs_diff", "parity_top1_agreement", "test_top1", "latency_model_mape",
                "sha256.model.onnx", "sha256.weights.safetensors"):
        assert mv.tags.get(tag), tag
    assert mv.tags["dataset_version"] == DATASET_VERSION and mv.tags["dagster_run_id"] == "run-1"
    assert mv.tags["latency_model_mape"] == "0.0400"
    root = shipped[0]
    assert mv.tags["git_sha"] == git(root, "rev-parse", "HEAD") and mv.tags["git_dirty"] == "false"

    uri = f"models:/{name}@{alias('candidate', 'cpu-ort-fp32')}"
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = mlflow.pyfunc.load_model(uri).predict(images)  # labels and probabilities, the label map inside
    assert not [w for w in caught if "type hint" in str(w.message)]  # a user's load prints nothing to fix
    assert list(preds.columns) == ["label", "probability", "probabilities"] and len(preds) == 3
    expected = package_mod.run_engine(Path(folder) / "model.onnx", load_target(
        PACKAGE_ROOT / "infra" / "targets" / "cpu-ort-fp32.yaml"), images, 16)
    softmax = np.exp(expected - expected.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    assert list(preds["label"]) == [str(i) for i in expected.argmax(-1)]
    assert np.allclose(np.stack(preds["probabilities"]), softmax, atol=1e-5)
    assert np.allclose(preds["probability"], softmax.max(-1), atol=1e-5)
    downloaded = load_registered(name, res.registered_version)
    assert (downloaded / "artifacts" / "label_map.json").is_file()
    assert [i.name for i in onnx.load(str(downloaded / "artifacts" / "model.onnx")).graph.input] == ["image"]
    assert not list(downloaded.rglob("*.data"))  # one self-contained model.onnx


def test_int8_package_is_quantized_passes_its_gate_and_registers(shipped):
    res = package(shipped, "cpu-ort-int8")
    graph = onnx.load(shipped[0] / res.package["onnx"]).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert gate(res, "check_edge_package_parity")["passed"], gate(res, "check_edge_package_parity")
    assert res.package["parity"]["max_abs_diff"] > 1e-4  # far outside fp32's limit: judged on accuracy instead
    assert res.passed and res.registered_version is not None


def test_int8_package_with_damaged_calibration_fails_its_gate(shipped, monkeypatch):
    """Calibrated on flat mid-grey images (0 after normalization), every activation range is near 0, so real
    images are clipped to almost nothing: the gate must catch it."""
    real_quantize = package_mod.quantize_int8
    monkeypatch.setattr(package_mod, "quantize_int8",
                        lambda fp32, out, calib: real_quantize(fp32, out, np.full_like(calib, 128)))
    before = len(versions(shipped))
    res = package(shipped, "cpu-ort-int8")
    assert not gate(res, "check_edge_package_parity")["passed"], gate(res, "check_edge_package_parity")
    assert res.registered_version is None and len(versions(shipped)) == before


def test_broken_normalization_fails_parity_and_registers_nothing(shipped, monkeypatch):
    before = len(versions(shipped))
    real_export = package_mod.export_onnx

    def export_without_normalization(model, path, **kw):
        return real_export(model, path, **{**kw, "mean": [0.0] * 3, "std": [1.0] * 3})

    monkeypatch.setattr(package_mod, "export_onnx", export_without_normalization)
    res = package(shipped, "cpu-ort-fp32")
    assert not next(g for g in res.gates if g["name"] == "check_edge_package_parity")["passed"]
    assert res.registered_version is None
    assert len(versions(shipped)) == before


def test_latency_over_budget_registers_nothing(shipped):
    root, _, _ = shipped
    slow = root / "infra" / "targets" / "tight.yaml"
    shutil.copy(root / "infra" / "targets" / "cpu-ort-fp32.yaml", slow)
    slow.write_text(slow.read_text().replace("latency_budget_ms: 50", "latency_budget_ms: 0.0001"))
    before = len(versions(shipped))
    res = package(shipped, "tight")
    gate = next(g for g in res.gates if g["name"] == "check_edge_package_latency_budget")
    assert not gate["passed"] and gate["details"]["budget_ms"] == 0.0001
    assert res.registered_version is None and len(versions(shipped)) == before
    with pytest.raises(mlflow.exceptions.MlflowException):
        mlflow.MlflowClient().get_model_version_by_alias(res.registered_model, alias("candidate", "tight"))


def test_champion_is_scored_on_the_candidates_own_test_images(shipped, tmp_path):
    """The champion's tagged top-1 (another test set's) is ignored: its registered ONNX is scored on the
    candidate's test split. Worse there: the candidate passes; better there: it is blocked."""
    root, _, _ = shipped
    targets = root / "infra" / "targets"
    shutil.copy(targets / "cpu-ort-fp32.yaml", targets / "champ.yaml")
    weak = constant_head_weights(shipped, tmp_path / "weak.safetensors")

    first = package(shipped, "champ", weights=weak)  # no champion yet: registers
    client = mlflow.MlflowClient()  # on the store the stage just used
    name, weak_version = first.registered_model, first.registered_version
    assert weak_version is not None
    client.set_registered_model_alias(name, alias("champion", "champ"), weak_version)
    client.set_model_version_tag(name, weak_version, "test_top1", "1.0")  # a stale figure from another test set

    good = package(shipped, "champ")
    g = gate(good, "check_edge_package_accuracy_vs_champion")
    assert g["passed"] and good.registered_version is not None
    d = g["details"]
    assert d["champion_version"] == weak_version and d["champion_top1"] < good.test_top1 - 0.5
    assert d["images"] == len(load_manifest(shipped[1]).split("test"))  # all of the candidate's test split

    client.set_registered_model_alias(name, alias("champion", "champ"), good.registered_version)
    client.set_model_version_tag(name, good.registered_version, "test_top1", "0.0")
    before = len(versions(shipped))
    worse = package(shipped, "champ", weights=weak)
    g = gate(worse, "check_edge_package_accuracy_vs_champion")
    assert not g["passed"] and g["details"]["champion_version"] == good.registered_version
    assert g["details"]["champion_top1"] == pytest.approx(good.test_top1)  # the champion, rescored on the same images
    assert worse.registered_version is None and len(versions(shipped)) == before
    moved = client.get_model_version_by_alias(name, alias("candidate", "champ")).version
    assert str(moved) == good.registered_version  # the alias did not move


def test_registration_refuses_a_project_outside_git_unless_allowed(shipped, tmp_path, monkeypatch):
    root, _, _ = shipped
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(root / "params.yaml", loose / "params.yaml")
    shutil.copytree(root / "infra", loose / "infra")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a checkout above
    with pytest.raises(ProvenanceError, match="not inside a git checkout"):
        package(shipped, "cpu-ort-fp32", root=loose)
    assert not (loose / "runs").exists()  # refused before anything was built

    res = package(shipped, "cpu-ort-fp32", root=loose, allow_dirty=True)
    assert res.registered_version is not None
    mv = mlflow.MlflowClient().get_model_version(res.registered_model, res.registered_version)
    assert mv.tags["git_dirty"] == "true" and "not inside a git checkout" in mv.tags["git_sha"]


def test_tensorrt_int8_package_wires_calibration_and_engine_cache(shipped, monkeypatch, tmp_path):
    """Everything around TensorRT, here: the runner gets polygraphy calibration batches and an engine cache."""
    from pipeline.targets import Target, latency
    from pipeline.targets.runners import make_runner as real_make_runner

    root, data, ft = shipped
    trt = Target(name="orin", runtime="tensorrt", device="jetson-orin", precision="int8", threads=1, batch_size=2,
                 latency_budget_ms=50)
    seen = []

    def recording_runner(onnx_path, target, *, input_size, **kwargs):
        seen.append(kwargs)
        cpu = Target(name="cpu", runtime="onnxruntime", device="cpu", precision="fp32", threads=1,
                     batch_size=target.batch_size, latency_budget_ms=50)
        return real_make_runner(onnx_path, cpu, input_size=input_size)  # stands in for TrtRunner here

    monkeypatch.setattr(package_mod, "make_runner", recording_runner)
    monkeypatch.setattr(latency, "make_runner", recording_runner)
    monkeypatch.setattr(latency, "engine_description", lambda t: {"target": t.name, "engine_version": "tensorrt"})
    pkg = package_mod.build_package(ft.weights, data, tmp_path / "pkg", trt, load_params(root), root=root)
    assert len(seen) == 2  # parity, then latency
    for kwargs in seen:
        batches = kwargs["calibration"]
        assert len(batches) == 16 and batches[0]["image"].shape == (2, 16, 16, 3)
        assert batches[0]["image"].dtype == np.uint8
        assert kwargs["engine_cache_dir"] == root / "runs" / "engines"  # export.engine_cache_dir, from the root
    assert pkg.optimizer.startswith("TensorRT int8")
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(pkg.onnx).graph.node)  # TensorRT quantizes


def cpu_stand_in(target):
    from pipeline.targets import Target

    return Target(name="cpu", runtime="onnxruntime", device="cpu", precision="fp32", threads=1,
                  batch_size=target.batch_size, latency_budget_ms=50)


def test_fp16_package_passes_the_fp16_limits_and_not_the_fp32_ones(shipped, monkeypatch, tmp_path):
    """A real half-precision graph (onnxconverter-common, run by ONNX Runtime) stands in for TensorRT fp16:
    its measured parity meets the fp16 limits and, as any fp16 engine's would, misses fp32's."""
    from onnxconverter_common import float16

    from pipeline.targets import Target, latency
    from pipeline.targets.runners import make_runner as real_make_runner

    root, data, ft = shipped
    trt = Target(name="orin16", runtime="tensorrt", device="jetson-orin", precision="fp16", threads=1,
                 batch_size=2, latency_budget_ms=50)

    def fp16_runner(onnx_path, target, *, input_size, **kwargs):
        half = Path(onnx_path).with_name("model.fp16.onnx")
        if not half.exists():
            fp32 = onnx.load(str(onnx_path))
            casts = [n.name for n in fp32.graph.node if n.op_type == "Cast"]  # the graph's own casts stay as is
            onnx.save(float16.convert_float_to_float16(fp32, keep_io_types=True, node_block_list=casts), str(half))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(half)).graph.initializer)
        return real_make_runner(half, cpu_stand_in(target), input_size=input_size)

    monkeypatch.setattr(package_mod, "make_runner", fp16_runner)
    monkeypatch.setattr(latency, "make_runner", fp16_runner)
    monkeypatch.setattr(latency, "engine_description", lambda t: {"target": t.name, "engine_version": "tensorrt"})
    params = load_params(root)
    pkg = package_mod.build_package(ft.weights, data, tmp_path / "pkg", trt, params, root=root)
    par = pkg.parity
    assert par.precision == "fp16" and par.max_abs_diff > 0  # real half-precision rounding
    assert parity_gate(par, params["export"]).passed
    assert not parity_gate(dataclasses.replace(par, precision="fp32"), params["export"]).passed


def test_tensorrt_engine_cache_is_reused_across_builds_and_rebuilt_for_another_key(shipped, monkeypatch, tmp_path):
    """TensorRT stood in at polygraphy's loaders: the real trt_engine decides to build or to load the cached file."""
    import polygraphy.backend.trt as ptrt

    from pipeline.targets import Target, latency, runners
    from pipeline.targets.runners import make_runner as real_make_runner

    root, data, ft = shipped
    trt = Target(name="orin", runtime="tensorrt", device="jetson-orin", precision="fp16", threads=1, batch_size=2,
                 latency_budget_ms=50)
    identity = ["10.3.0", "Orin sm_87"]
    builds, loads = [], []

    class FakeEngine:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self) -> bytes:
            return self.blob

    class FakeBuild:  # polygraphy's EngineFromNetwork: builds when called
        def __init__(self, network, config=None):
            self.network = network

        def __call__(self):
            builds.append(identity[0])
            return FakeEngine(f"engine for {identity[0]}".encode())

    class FakeLoad:  # polygraphy's EngineFromBytes: deserializes when called
        def __init__(self, serialized):
            self.serialized = serialized

        def __call__(self):
            blob = self.serialized()
            loads.append(blob)
            return FakeEngine(blob)

    monkeypatch.setattr(ptrt, "EngineFromNetwork", FakeBuild)
    monkeypatch.setattr(ptrt, "EngineFromBytes", FakeLoad)
    monkeypatch.setattr(runners, "trt_identity", lambda: tuple(identity))

    def trt_stand_in(onnx_path, target, *, input_size, calibration=None, engine_cache_dir=None):
        loader = runners.trt_engine(onnx_path, target, input_size, calibration, engine_cache_dir)
        loader()  # what TrtRunner.activate() does with it
        return real_make_runner(onnx_path, cpu_stand_in(target), input_size=input_size)

    monkeypatch.setattr(package_mod, "make_runner", trt_stand_in)
    monkeypatch.setattr(latency, "make_runner", trt_stand_in)
    monkeypatch.setattr(latency, "engine_description", lambda t: {"target": t.name, "engine_version": "tensorrt"})
    params = load_params(root)
    cache = root / "runs" / "engines"
    shutil.rmtree(cache, ignore_errors=True)

    package_mod.build_package(ft.weights, data, tmp_path / "a", trt, params, root=root)
    assert builds == ["10.3.0"] and loads == [b"engine for 10.3.0"]  # built for parity, reused for latency
    [engine_file] = cache.glob("*.engine")
    assert engine_file.read_bytes() == b"engine for 10.3.0" and not list(cache.glob("*.tmp"))

    package_mod.build_package(ft.weights, data, tmp_path / "b", trt, params, root=root)
    assert builds == ["10.3.0"] and len(loads) == 3  # the second package build builds nothing

    identity[0] = "10.4.0"  # another TensorRT: another key
    package_mod.build_package(ft.weights, data, tmp_path / "c", trt, params, root=root)
    assert builds == ["10.3.0", "10.4.0"] and len(list(cache.glob("*.engine"))) == 2


def test_train_on_val_trains_on_both_splits_and_claims_no_val_estimate(shipped, tmp_path):
    root, data, ft = shipped
    params = load_params(root)
    from pipeline.data import load_manifest
    from pipeline.weights import load_weights

    manifest = load_manifest(data)
    n_train, n_val = len(manifest.split("train")), len(manifest.split("val"))
    batch = params["finetune"]["batch_size"]
    arch = ft.arch
    runs = {}
    for on_val in (False, True):
        runs[on_val] = finetune(data, tmp_path / str(on_val), params, root / "sn" / "supernet.safetensors", arch,
                                overrides={"epochs": 1}, train_on_val=on_val)
    assert runs[False].train.steps == n_train // batch
    assert runs[True].train.steps == (n_train + n_val) // batch > n_train // batch  # one epoch over both
    assert runs[False].val is not None and runs[True].val is None
    assert runs[True].test.n == runs[False].test.n  # test is never trained on
    assert load_weights(runs[True].weights)[1]["train_splits"] == ["train", "val"]
