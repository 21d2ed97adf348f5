"""Export, parity, latency gates and MLflow registration of a tiny fine-tuned model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY, make_project, set_params

import mlflow
from pipeline.export import package as package_mod
from pipeline.export.package import Parity
from pipeline.finetune.train import finetune
from pipeline.models.supernet import SearchSpace
from pipeline.nas.supernet_train import train_supernet
from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.registry.gates import champion_gate, parity_gate
from pipeline.registry.mlflow_registry import alias, load_registered
from pipeline.stages.package import run_package
from pipeline.targets import load_target
from pipeline.tracking import Tracker

DATASET_VERSION = "tiny.dir"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, digits_dataset):
    """A tiny project with targets, a trained supernet and a fine-tuned smallest arch."""
    root = make_project(tmp_path_factory.mktemp("ship") / "project")
    params = set_params(root, **TINY)
    targets = root / "infra" / "targets"
    targets.mkdir(parents=True)
    for name in ("cpu-ort-fp32", "cpu-ort-int8"):
        text = (PACKAGE_ROOT / "infra" / "targets" / f"{name}.yaml").read_text()
        (targets / f"{name}.yaml").write_text(re.sub(r"latency_budget_ms: [0-9.]+", "latency_budget_ms: 50", text))
    sn = train_supernet(digits_dataset, root / "sn", params, backbone=None, overrides={"epochs": 2})
    arch = SearchSpace.from_params(params["space"]).largest()
    ft = finetune(digits_dataset, root / "ft", params, sn.weights, arch,
                  meta={"dataset_version": DATASET_VERSION, "git_sha": "abc", "dagster_run_id": ""})
    return root, digits_dataset, ft


def package(shipped, target: str, **tag_kw):
    root, data, ft = shipped
    params = load_params(root)
    return run_package(root, params, Tracker.from_params(params, root),
                       {"tracked_dir": str(data), "version": DATASET_VERSION}, {"weights": str(ft.weights)},
                       {"latency_mape": 0.04}, target, tags={"dagster_run_id": "run-1", **tag_kw})


def versions(shipped) -> list:
    root, _, _ = shipped
    params = load_params(root)
    mlflow.set_tracking_uri(Tracker.from_params(params, root).tracking_uri)
    try:
        return mlflow.MlflowClient().search_model_versions(f"name='{params['registry']['model_name']}'")
    except mlflow.exceptions.MlflowException:
        return []


def test_fp32_package_parity_tags_alias_and_load_back(shipped):
    res = package(shipped, "cpu-ort-fp32")
    assert res.passed and res.registered_version is not None
    par = res.package["parity"]
    assert par["max_abs_diff"] < 1e-4 and par["top1_agreement"] == 1.0
    assert par["engine_test_top1"] == pytest.approx(par["torch_test_top1"])
    folder = res.package["folder"]
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

    uri = f"models:/{name}@{alias('candidate', 'cpu-ort-fp32')}"
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    onnx_model = mlflow.onnx.load_model(uri)
    assert [i.name for i in onnx_model.graph.input] == ["image"]
    preds = mlflow.pyfunc.load_model(uri).predict(images)
    logits = preds["logits"] if isinstance(preds, dict) else np.asarray(preds)
    assert np.asarray(logits).shape == (3, 10)
    downloaded = load_registered(name, res.registered_version)
    assert (downloaded / "extra_files" / "label_map.json").is_file()
    assert not list(downloaded.glob("*.data"))  # one self-contained model.onnx


def test_int8_package_is_quantized_and_judged_on_accuracy(shipped):
    res = package(shipped, "cpu-ort-int8")
    graph = onnx.load(res.package["onnx"]).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    par = res.package["parity"]
    gate = next(g for g in res.gates if g["name"] == "check_edge_package_parity")
    assert gate["details"]["top1_drop"] == pytest.approx(par["torch_test_top1"] - par["engine_test_top1"])
    assert gate["passed"] == (par["top1_agreement"] >= 0.99 and gate["details"]["top1_drop"] <= 0.01)
    assert res.passed == (res.registered_version is not None)


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


def test_worse_than_champion_registers_nothing(shipped):
    first = package(shipped, "cpu-ort-fp32")
    client = mlflow.MlflowClient()
    name = first.registered_model
    client.set_registered_model_alias(name, alias("champion", "cpu-ort-fp32"), first.registered_version)
    client.set_model_version_tag(name, first.registered_version, "test_top1", "1.0")  # an unbeatable champion
    before = len(versions(shipped))
    res = package(shipped, "cpu-ort-fp32")
    gate = next(g for g in res.gates if g["name"] == "check_edge_package_accuracy_vs_champion")
    assert not gate["passed"] and gate["details"]["champion_version"] == first.registered_version
    assert res.registered_version is None and len(versions(shipped)) == before
    moved = client.get_model_version_by_alias(name, alias("candidate", "cpu-ort-fp32")).version
    assert str(moved) == first.registered_version  # the alias did not move


def test_gates_on_hand_made_figures():
    p = load_params(PACKAGE_ROOT)["export"]
    ok = Parity(64, 2e-6, 1.0, 0.95, 0.95, "fp32")
    assert parity_gate(ok, p).passed
    assert not parity_gate(Parity(64, 3e-3, 1.0, 0.95, 0.95, "fp32"), p).passed
    assert not parity_gate(Parity(64, 2e-6, 0.98, 0.95, 0.95, "fp32"), p).passed
    assert parity_gate(Parity(64, 0.3, 1.0, 0.945, 0.95, "int8"), p).passed  # judged on accuracy
    assert not parity_gate(Parity(64, 0.01, 1.0, 0.90, 0.95, "int8"), p).passed
    assert champion_gate(0.9, None, 0.005).passed
    assert champion_gate(0.9, {"version": "3", "test_top1": 0.904}, 0.005).passed
    assert not champion_gate(0.9, {"version": "3", "test_top1": 0.91}, 0.005).passed


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
    pkg = package_mod.build_package(ft.weights, data, tmp_path / "pkg", trt, load_params(root))
    assert len(seen) == 2  # parity, then latency
    for kwargs in seen:
        batches = kwargs["calibration"]
        assert len(batches) == 16 and batches[0]["image"].shape == (2, 16, 16, 3)
        assert batches[0]["image"].dtype == np.uint8
        assert kwargs["engine_cache"].name == "engine.plan"
    assert pkg.optimizer.startswith("TensorRT int8")
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(pkg.onnx).graph.node)  # TensorRT quantizes


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
