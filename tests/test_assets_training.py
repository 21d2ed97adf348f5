"""Assets pretrained_backbone and supernet, called directly on a tiny config."""

from __future__ import annotations

from pathlib import Path

from dagster import build_asset_context
from test_assets_dataset import resources

import mlflow
from assets.training import PretrainConfig, SupernetConfig, pretrained_backbone, supernet
from pipeline.weights import load_weights


def test_pretrained_backbone_and_supernet_assets(tiny_project, digits_dataset):
    dataset = {"tracked_dir": str(digits_dataset), "version": "test.dir"}
    res = resources(tiny_project)
    ctx = build_asset_context()
    pre = pretrained_backbone(context=ctx, config=PretrainConfig(epochs=1), dataset=dataset, **res)
    assert Path(pre.value["weights"]).is_file()
    assert Path(pre.metadata["reconstructions"].value).is_file()
    assert Path(pre.metadata["loss_curve"].value).is_file()
    _, meta = load_weights(Path(pre.value["weights"]))
    assert meta["dataset_version"] == "test.dir" and meta["git_sha"] and "dagster_run_id" in meta

    sup = supernet(context=build_asset_context(), config=SupernetConfig(epochs=1), dataset=dataset,
                   pretrained_backbone=pre.value, **res)
    top1 = sup.value["val_top1"]
    assert len(top1) == 4  # largest, smallest, 2 fixed random archs (tiny params)
    assert all(0.0 <= v <= 1.0 for v in top1.values())
    run = mlflow.get_run(sup.value["mlflow_run_id"])
    assert run.data.params["backbone"] == pre.value["weights"]
    assert any(k.startswith("val_top1.") for k in run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "val_top1.png", "val_top1_table.json", "checkpoint"} <= artifacts
