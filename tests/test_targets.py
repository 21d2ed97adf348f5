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

    set_params(tiny_project, targets_dir="targets", latency__warmup=2, latency__runs=5)
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
