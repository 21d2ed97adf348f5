"""Every CLI stage as `dvc repro` runs them, on a fresh clone and a COCO set made from the real digit scans:
the chain runs, then nothing; a changed param re-runs only what depends on it; a new target file (and
`vitforge targets sync`) adds its stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from conftest import TINY, clone_code, clone_env, commit_all, set_params
from PIL import Image

import mlflow
from pipeline.params import load_params
from pipeline.paths import paths
from pipeline.tracking import Tracker

BOX = "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 50\n"


def digits_coco(root: Path, per_class: int = 20) -> Path:
    """A COCO detection set: each 16 px scan one image, one box around the digit, category = the digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "images").mkdir(parents=True)
    images, annotations, seen = [], [], Counter()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if seen[label] == per_class:
            continue
        seen[label] += 1
        name = f"scan_{i:04d}.png"
        gray = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((16, 16), Image.Resampling.NEAREST)
        gray.convert("RGB").save(root / "images" / name)
        images.append({"id": i, "file_name": name, "width": 16, "height": 16})
        annotations.append({"id": 10_000 + i, "image_id": i, "category_id": int(label) + 1, "bbox": [2, 1, 12, 14]})
    categories = [{"id": d + 1, "name": f"digit-{d}"} for d in range(10)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return root


def test_dvc_repro_runs_every_stage_then_nothing_then_what_a_param_touches(tmp_path):
    clone = clone_code(tmp_path / "clone")  # a fresh clone: no dataset version yet
    assert not (clone / "data" / "dataset.dvc").exists()
    env = clone_env(clone)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])  # `vitforge` of this venv

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def status() -> set[str]:
        return set(json.loads(run("dvc", "status", "--json").stdout or "{}"))

    coco = digits_coco(tmp_path / "digits-coco")  # the registered model is named for it
    set_params(clone, **TINY, targets_dir="targets", dataset__data=str(coco), dataset__format="coco")
    (clone / "targets").mkdir()
    (clone / "targets" / "box.yaml").write_text(BOX)
    run(sys.executable, "-m", "pipeline.cli", "targets", "sync")  # dvc.yaml's targets: box
    commit_all(clone, "tiny config, one target")

    first = run("dvc", "repro").stdout
    for stage in ("dataset", "pretrain", "supernet", "search@box", "finetune@box", "package@box"):
        assert f"Running stage '{stage}'" in first, first[-2000:]
    assert "200 images, 10 classes, format coco" in first
    assert "target box: budget 50 ms" in first
    assert "registered vitforge-digits-coco version 1 as candidate-box" in first
    assert (clone / "data" / "dataset.dvc").is_file()

    second = run("dvc", "repro").stdout
    assert "Running stage" not in second, second
    assert status() == set()

    set_params(clone, finetune__lr=1.0e-3)  # the brief fine-tunes of the search and the fine-tune read it
    assert status() == {"search@box", "finetune@box"}
    set_params(clone, finetune__lr=TINY["finetune__lr"])
    assert status() == set()

    (clone / "targets" / "edge-box.yaml").write_text(BOX)  # as loose as box: the space fit's target stays
    run(sys.executable, "-m", "pipeline.cli", "targets", "sync")
    assert status() == {"search@edge-box", "finetune@edge-box", "package@edge-box"}

    p = paths(clone, load_params(clone))
    for f in (p.backbone(), p.supernet(), p.search_result("box"), p.finetune_result("box"),
              p.package_result("box"), p.package_dir("box") / "model.onnx"):
        assert f.is_file(), f
    finetune = json.loads(p.finetune_result("box").read_text())
    # the labels came through: every class of the COCO categories, in the fine-tune and in the package
    assert finetune["classes"] == [f"digit-{d}" for d in range(10)] and 0.0 <= finetune["test_top1"] <= 1.0
    assert json.loads((p.package_dir("box") / "label_map.json").read_text())["0"] == "digit-0"
    mlflow.set_tracking_uri(Tracker.from_params(p.params, clone).tracking_uri)
    mv = mlflow.MlflowClient().get_model_version_by_alias("vitforge-digits-coco", "candidate-box")
    assert mv.tags["target"] == "box" and mv.tags["dataset_version"] == finetune["dataset_version"]

    # one state with the UI: the project's Dagster instance holds what runs of the assets would have left
    from dagster import AssetCheckKey, AssetKey, FilesystemIOManager, build_init_resource_context, build_input_context

    from assets.partitions import targets_partitions
    from assets.recording import project_instance, storage_dir

    with project_instance(clone) as instance:
        for asset in ("dataset", "pretrained_backbone", "supernet"):
            assert instance.get_latest_materialization_event(AssetKey(asset)) is not None, asset
        assert sorted(instance.get_dynamic_partitions("targets")) == ["box", "edge-box"]  # synced
        for asset in ("architecture", "model", "edge_package"):
            assert instance.get_materialized_partitions(AssetKey(asset)) == {"box"}, asset
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("edge_package"), "check_edge_package_parity"), limit=5)
        assert [(r.status.value, r.event.dagster_event.event_specific_data.partition) for r in checks] == [
            ("SUCCEEDED", "box")]
        meta = instance.get_latest_materialization_event(AssetKey("edge_package")).asset_materialization.metadata
        assert meta["registered_version_page"].value.endswith("/#/models/vitforge-digits-coco/versions/1")
        # the values an asset run downstream reads through the IO manager are the stage's own
        io = FilesystemIOManager(base_dir=str(storage_dir(clone))).create_io_manager(
            build_init_resource_context())
        supernet = io.load_input(build_input_context(asset_key=AssetKey("supernet")))
        assert supernet["weights"] == p.rel(p.supernet())  # relative to the root, as every recorded path
        arch = io.load_input(build_input_context(asset_key=AssetKey("architecture"), partition_key="box",
                                                 asset_partitions_def=targets_partitions, instance=instance))
        assert arch == json.loads(p.search_result("box").read_text())
