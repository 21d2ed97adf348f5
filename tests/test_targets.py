"""Target files, the runner interface and latency measurement (pipeline.targets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.export.onnx import export_onnx
from pipeline.models.supernet import Arch, SearchSpace, build_vit
from pipeline.params import PACKAGE_ROOT
from pipeline.targets import Target, TargetError, list_targets, load_target
from pipeline.targets.latency import measure_latency
from pipeline.targets.runners import make_runner

GOOD = "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 5.0\n"


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_targets_load():
    targets = {name: load_target(p) for name, p in list_targets(PACKAGE_ROOT / "infra" / "targets").items()}
    assert {"cpu-ort-fp32", "cpu-ort-int8", "orin-trt-fp16", "t4-trt-fp16"} <= set(targets)
    assert targets["cpu-ort-int8"].precision == "int8"
    assert targets["t4-trt-fp16"].runtime == "tensorrt"
    assert targets["cpu-ort-fp32"].measurable_here()[0]


@pytest.mark.parametrize("text, field, problem", [
    (GOOD + "colour: red\n", "colour", "unknown field"),
    (GOOD.replace("onnxruntime", "tflite"), "runtime", "'onnxruntime' or 'tensorrt'"),
    (GOOD.replace("latency_budget_ms: 5.0", "latency_budget_ms: -1"), "latency_budget_ms", "greater than 0"),
    (GOOD.replace("latency_budget_ms: 5.0\n", ""), "latency_budget_ms", "missing"),
    (GOOD.replace("threads: 1", "threads: 0"), "threads", "greater than or equal to 1"),
    (GOOD.replace("batch_size: 1", "batch_size: many"), "batch_size", "valid integer"),
    (GOOD.replace("precision: fp32", "precision: fp16"), "(file)", "fp16 needs runtime tensorrt"),
    (GOOD + "name: other\n", "name", "not allowed"),
])
def test_bad_target_fields_are_named(tmp_path, text, field, problem):
    path = write(tmp_path, text)
    with pytest.raises(TargetError) as info:
        load_target(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert field in msg and problem in msg, msg


@pytest.mark.parametrize("text, problem", [("runtime: [unclosed\n", "not valid YAML"),
                                           ("- a\n- b\n", "a mapping of fields")])
def test_target_file_that_is_not_a_mapping(tmp_path, text, problem):
    with pytest.raises(TargetError, match=problem):
        load_target(write(tmp_path, text))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    space = SearchSpace.from_params({"patch_size": 4, "img_sizes": [16], "depths": [1], "embed_dims": [16],
                                     "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [2.0]},
                                    num_classes=3)
    torch.manual_seed(0)
    model = build_vit(Arch(1, 16, 2.0, 16), space).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", input_size=16, mean=[0.5] * 3,
                       std=[0.5] * 3)
    return model, path


def cpu_target(**kw) -> Target:
    return Target(**{"name": "cpu", "runtime": "onnxruntime", "device": "cpu", "precision": "fp32", "threads": 1,
                     "batch_size": 1, "latency_budget_ms": 5.0, **kw})


def test_runner_interface_on_cpu_matches_pytorch(tiny_onnx):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    model, path = tiny_onnx
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    runner = make_runner(path, cpu_target(threads=2), input_size=16)
    assert isinstance(runner, OnnxrtRunner)
    with runner:
        out = runner.infer({"image": images})["logits"]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(out - expected).max() < 1e-4


def test_measure_latency_reports_how_it_measured(tiny_onnx):
    _, path = tiny_onnx
    rep = measure_latency(path, cpu_target(batch_size=2), input_size=16, warmup=3, runs=15)
    assert len(rep.samples_ms) == 15 and rep.input_shape == [2, 16, 16, 3]
    assert 0 < rep.p50_ms <= rep.p90_ms <= rep.p99_ms
    assert rep.how["threads"] == 1 and rep.how["engine_version"].startswith("onnxruntime")
    assert rep.how["cpu_model"] and rep.warmup == 3


def test_tensorrt_target_is_reported_unmeasurable_without_tensorrt():
    t = load_target(PACKAGE_ROOT / "infra" / "targets" / "orin-trt-fp16.yaml")
    ok, why = t.measurable_here()
    if importlib.util.find_spec("tensorrt") is None:
        assert not ok and "tensorrt is not installed" in why


@pytest.mark.trt
def test_tensorrt_runner_matches_onnxruntime(tiny_onnx):
    pytest.importorskip("tensorrt")
    from polygraphy.backend.trt import TrtRunner

    _, path = tiny_onnx
    images = np.random.default_rng(2).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    trt_target = Target(name="gpu", runtime="tensorrt", device="cuda", precision="fp16", threads=1, batch_size=1,
                        latency_budget_ms=5.0)
    runner = make_runner(path, trt_target, input_size=16)
    assert isinstance(runner, TrtRunner)
    with runner:
        out = runner.infer({"image": images})["logits"]
    with make_runner(path, cpu_target(), input_size=16) as ort_runner:
        ref = ort_runner.infer({"image": images})["logits"]
    assert np.abs(out - ref).max() < 1e-2


def test_targets_list_measures_the_space_on_each_target(tiny_project):
    import subprocess
    import sys

    from conftest import set_params

    set_params(tiny_project, targets_dir="targets", latency__warmup=5, latency__runs=40)  # 0.1 ms apart
    (tiny_project / "targets").mkdir()
    spec = "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: {}\n"
    (tiny_project / "targets" / "roomy.yaml").write_text(spec.format(100))
    (tiny_project / "targets" / "gpu.yaml").write_text(spec.format(1).replace("onnxruntime", "tensorrt")
                                                       .replace("device: cpu", "device: cuda"))
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(tiny_project), "targets", "list"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    fastest, largest = (float(v) for v in rows["roomy"].split()[6:8])
    assert 0 < fastest < largest < 100
    assert "no: largest within budget" in rows["roomy"]  # a 100 ms budget does not bind the tiny space
    assert rows["gpu"].split()[6:8] == ["-", "-"] and rows["gpu"].rstrip().endswith(")")  # not measurable here


def trt_target(device: str) -> Target:
    return Target(name="gpu", runtime="tensorrt", device=device, precision="fp16", threads=1, batch_size=1,
                  latency_budget_ms=2.0)


@pytest.fixture
def fake_machine(monkeypatch):
    """This machine as any other: whether tensorrt imports, the CUDA GPU's name, the board's model (None: none)."""
    from pipeline.targets import schema

    machine = {"tensorrt": True, "cuda": None, "board": None}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if machine["tensorrt"] else None)
                        if name == "tensorrt" else real_find_spec(name, *a))
    monkeypatch.setattr(schema, "cuda_device_name", lambda: machine["cuda"], raising=False)
    monkeypatch.setattr(schema, "board_model", lambda: machine["board"], raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: machine["cuda"] is not None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: machine["cuda"])
    return machine


@pytest.mark.parametrize("device, tensorrt, cuda, board, ok, why", [
    # a Jetson target is proven on that Jetson board only, never on a datacenter card
    ("jetson-orin", True, "NVIDIA H200", None, False, "not a Jetson board"),
    ("jetson-orin", True, "Orin", "NVIDIA Jetson AGX Orin Developer Kit", True, "NVIDIA Jetson AGX Orin"),
    ("jetson-orin", True, None, "NVIDIA Jetson Orin Nano Developer Kit", True, "Orin Nano"),
    ("jetson-orin", True, "Xavier", "NVIDIA Jetson Xavier NX Developer Kit", False, "not a Jetson orin"),
    ("jetson-agx-orin", True, None, "NVIDIA Jetson Orin Nano Developer Kit", False, "not a Jetson agx orin"),
    ("jetson-orin", True, None, "Raspberry Pi 4 Model B Rev 1.4", False, "not a Jetson orin"),
    ("jetson-orin", False, "Orin", "NVIDIA Jetson AGX Orin Developer Kit", False, "tensorrt is not installed"),
    # `cuda` takes any CUDA GPU
    ("cuda", True, "NVIDIA H200", None, True, "NVIDIA H200"),
    ("cuda", True, None, None, False, "no CUDA device"),
    ("cuda", False, "NVIDIA H200", None, False, "tensorrt is not installed"),
    # a named GPU must be the CUDA device, word for word (an A100 is no A10)
    ("t4", True, "Tesla T4", None, True, "Tesla T4"),
    ("t4", True, "NVIDIA H200", None, False, "is not a t4"),
    ("a10", True, "NVIDIA A100-SXM4-80GB", None, False, "is not a a10"),
    ("rtx-4090", True, "NVIDIA GeForce RTX 4090", None, True, "RTX 4090"),
    ("t4", True, None, None, False, "no CUDA device"),
])
def test_device_targets_are_measurable_only_on_that_device(fake_machine, device, tensorrt, cuda, board, ok, why):
    fake_machine.update(tensorrt=tensorrt, cuda=cuda, board=board)
    got, reason = trt_target(device).measurable_here()
    assert got is ok and why in reason, reason


def test_shipped_orin_target_is_not_proven_on_a_datacenter_gpu(fake_machine):
    fake_machine.update(cuda="NVIDIA H200")
    orin = load_target(PACKAGE_ROOT / "infra" / "targets" / "orin-trt-fp16.yaml")
    assert not orin.measurable_here()[0]
    t4 = load_target(PACKAGE_ROOT / "infra" / "targets" / "t4-trt-fp16.yaml")  # device t4: a T4, not any GPU
    assert not t4.measurable_here()[0]
    fake_machine.update(cuda="Tesla T4")
    assert t4.measurable_here()[0] and not orin.measurable_here()[0]
    assert load_target(PACKAGE_ROOT / "infra" / "targets" / "cpu-ort-fp32.yaml").measurable_here()[0]
