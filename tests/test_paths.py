"""Artifact paths are defined once (pipeline/paths.py): dvc.yaml's outs and deps are the same paths."""

from __future__ import annotations

import yaml

from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.paths import paths
from pipeline.replay import sidecar


def test_dvc_stages_write_and_read_where_the_stages_do():
    p = paths(PACKAGE_ROOT, load_params(PACKAGE_ROOT))
    stages = yaml.safe_load((PACKAGE_ROOT / "dvc.yaml").read_text())["stages"]

    def outs(stage: str) -> set[str]:
        body = stages[stage].get("do", stages[stage])
        return {next(iter(o)) if isinstance(o, dict) else o for o in body["outs"]}

    def deps(stage: str) -> set[str]:
        return set(stages[stage].get("do", stages[stage])["deps"])

    t = "${item}"
    assert outs("dataset") == {p.rel(p.dataset_version_file())}
    assert {p.rel(p.dataset_version_file()), p.rel(p.dataset())} <= deps("pretrain")
    assert outs("pretrain") == {p.rel(p.backbone()), p.rel(sidecar(p.backbone()))}
    assert outs("supernet") == {p.rel(p.supernet()), p.rel(sidecar(p.supernet()))}
    assert p.rel(p.backbone()) in deps("supernet")
    assert outs("search") == {p.rel(p.search_result(t)), p.rel(p.latency_model(t))}
    assert {p.rel(p.supernet()), p.rel(p.dataset())} <= deps("search")
    assert outs("finetune") == {p.rel(p.finetune_dir(t) / "model.safetensors"), p.rel(p.finetune_result(t)),
                                p.rel(sidecar(p.finetune_dir(t) / "model.safetensors"))}
    assert p.rel(p.search_result(t)) in deps("finetune")
    assert outs("package") == {p.rel(p.package_dir(t))}
    assert p.rel(p.finetune_dir(t) / "model.safetensors") in deps("package")


def test_rel_is_relative_inside_the_root_and_absolute_outside(tmp_path):
    p = paths(tmp_path, load_params(PACKAGE_ROOT))
    assert p.rel(p.search_result("box")) == "runs/search/box.json"
    assert p.rel("/elsewhere/x.json") == "/elsewhere/x.json"


def test_rel_keeps_a_symlinked_run_folder_under_the_root(tmp_path):
    """``runs -> /scratch/runs``: what a stage writes there is still recorded as ``runs/...``, so a copy of the
    project (which copies the link, or its target) reads its own files, not the original's absolute path."""
    root, scratch = tmp_path / "project", tmp_path / "scratch"
    root.mkdir()
    (scratch / "runs" / "supernet").mkdir(parents=True)
    (root / "runs").symlink_to(scratch / "runs")
    p = paths(root, load_params(PACKAGE_ROOT))
    assert p.rel(p.supernet()) == "runs/supernet/supernet.safetensors"
    assert p.rel(scratch / "elsewhere.txt") == str(scratch / "elsewhere.txt")  # outside: absolute, as given


def test_dvc_targets_file_is_current_with_the_target_files(tmp_path):
    """dvc.yaml iterates over infra/dvc-targets.yaml; it must list exactly the ONNX Runtime target files, and
    `vitforge targets sync` must add a new one."""
    import shutil

    from pipeline.dvc_targets import INDEX, KEY, render, sync_index

    params = load_params(PACKAGE_ROOT)
    assert (PACKAGE_ROOT / INDEX).read_text() == render(PACKAGE_ROOT, params), \
        "infra/dvc-targets.yaml is stale: run `vitforge targets sync`"
    stages = yaml.safe_load((PACKAGE_ROOT / "dvc.yaml").read_text())
    assert str(INDEX) in stages["vars"]
    assert all(stages["stages"][s]["foreach"] == "${" + KEY + "}" for s in ("search", "finetune", "package"))
    listed = yaml.safe_load((PACKAGE_ROOT / INDEX).read_text())[KEY]
    assert "cpu-ort-fp32" in listed and "orin-trt-fp16" not in listed  # TensorRT: proven on its device
    shutil.copytree(PACKAGE_ROOT / "infra" / "targets", tmp_path / "infra" / "targets")
    shutil.copy(PACKAGE_ROOT / INDEX, tmp_path / INDEX)
    (tmp_path / "infra" / "targets" / "arm-box.yaml").write_text(
        "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 2\nbatch_size: 1\nlatency_budget_ms: 4\n")
    names, changed = sync_index(tmp_path, params)
    assert changed and "arm-box" in names
    assert yaml.safe_load((tmp_path / INDEX).read_text())[KEY] == names
    assert sync_index(tmp_path, params) == (names, False)
