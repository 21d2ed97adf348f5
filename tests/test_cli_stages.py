"""Every CLI stage, one after another as dvc.yaml runs them, on a COCO set made from the real digit scans."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from conftest import set_params
from PIL import Image

import mlflow
from pipeline.cli import main
from pipeline.params import load_params
from pipeline.paths import paths
from pipeline.tracking import Tracker


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


def vitforge(capsys, root: Path, *args: str) -> str:
    """One `vitforge` command, in this process (the console script's main), its output."""
    rc = main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    assert rc == 0, f"vitforge {' '.join(args)}: {err[-3000:]}"
    return out


def test_each_stage_from_the_cli_on_a_coco_set_ends_registered(tiny_project, tmp_path, capsys):
    set_params(tiny_project, targets_dir="targets")
    (tiny_project / "targets").mkdir()
    (tiny_project / "targets" / "box.yaml").write_text("runtime: onnxruntime\ndevice: cpu\nprecision: fp32\n"
                                                       "threads: 1\nbatch_size: 1\nlatency_budget_ms: 50\n")
    coco = digits_coco(tmp_path / "coco")
    out = vitforge(capsys, tiny_project, "stage", "dataset", "--data", str(coco), "--format", "coco")
    assert "200 images, 10 classes, format coco" in out
    vitforge(capsys, tiny_project, "stage", "pretrain")
    vitforge(capsys, tiny_project, "stage", "supernet")
    search = vitforge(capsys, tiny_project, "stage", "search", "--target", "box")
    assert "target box: budget 50 ms" in search
    vitforge(capsys, tiny_project, "stage", "finetune", "--target", "box")
    out = vitforge(capsys, tiny_project, "stage", "package", "--target", "box")
    assert "registered vitforge-digits version 1 as candidate-box" in out

    p = paths(tiny_project, load_params(tiny_project))
    for f in (p.backbone(), p.supernet(), p.search_result("box"), p.finetune_result("box"),
              p.package_result("box"), p.package_dir("box") / "model.onnx"):
        assert f.is_file(), f
    finetune = json.loads(p.finetune_result("box").read_text())
    # the labels came through: every class of the COCO categories, in the fine-tune and in the package
    assert finetune["classes"] == [f"digit-{d}" for d in range(10)] and 0.0 <= finetune["test_top1"] <= 1.0
    assert json.loads((p.package_dir("box") / "label_map.json").read_text())["0"] == "digit-0"
    mlflow.set_tracking_uri(Tracker.from_params(p.params, tiny_project).tracking_uri)
    mv = mlflow.MlflowClient().get_model_version_by_alias("vitforge-digits", "candidate-box")
    assert mv.tags["target"] == "box" and mv.tags["dataset_version"] == finetune["dataset_version"]

    # one state with the UI: the project's Dagster instance holds what runs of the assets would have left
    from dagster import AssetCheckKey, AssetKey, FilesystemIOManager, build_init_resource_context, build_input_context

    from assets.partitions import targets_partitions
    from assets.recording import project_instance, storage_dir

    with project_instance(tiny_project) as instance:
        for asset in ("dataset", "pretrained_backbone", "supernet"):
            assert instance.get_latest_materialization_event(AssetKey(asset)) is not None, asset
        assert instance.get_dynamic_partitions("targets") == ["box"]
        for asset in ("architecture", "model", "edge_package"):
            assert instance.get_materialized_partitions(AssetKey(asset)) == {"box"}, asset
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("edge_package"), "check_edge_package_parity"), limit=5)
        assert [(r.status.value, r.event.dagster_event.event_specific_data.partition) for r in checks] == [
            ("SUCCEEDED", "box")]
        meta = instance.get_latest_materialization_event(AssetKey("edge_package")).asset_materialization.metadata
        assert meta["registered_version_page"].value.endswith("/#/models/vitforge-digits/versions/1")
        # the values an asset run downstream reads through the IO manager are the stage's own
        io = FilesystemIOManager(base_dir=str(storage_dir(tiny_project))).create_io_manager(
            build_init_resource_context())
        supernet = io.load_input(build_input_context(asset_key=AssetKey("supernet")))
        assert Path(supernet["weights"]) == p.supernet()
        arch = io.load_input(build_input_context(asset_key=AssetKey("architecture"), partition_key="box",
                                                 asset_partitions_def=targets_partitions, instance=instance))
        assert arch == json.loads(p.search_result("box").read_text())
