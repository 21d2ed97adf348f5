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
    assert not Path(pre.value["weights"]).is_absolute()  # recorded relative to the project root
    assert (tiny_project / pre.value["weights"]).is_file()
    run_id = pre.metadata["mlflow_run_id"].value
    for plot in ("reconstructions", "loss_curve"):  # inline, as the MLflow UI serves the run's PNG
        assert f"get-artifact?path={plot}.png&run_uuid={run_id}" in pre.metadata[plot].value
        assert (Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / f"{plot}.png").is_file()
    _, meta = load_weights(tiny_project / pre.value["weights"])
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


def test_a_materialization_trains_what_the_cli_trains(tmp_path, digits_dir):
    """The same params through Dagster (Config left unset) and through `vitforge stage`: the same weights."""
    from conftest import TINY, make_project, set_params
    from dagster import DagsterInstance, FilesystemIOManager, materialize

    from assets.dataset import dataset as dataset_asset
    from pipeline.cli import main as vitforge
    from pipeline.weights import weights_sha256

    roots = {}
    for side in ("cli", "dagster"):
        roots[side] = make_project(tmp_path / side)
        set_params(roots[side], **{**TINY, "pretrain__epochs": 2, "pretrain__lr": 2e-3})  # not the repo's schedule
    assert vitforge(["--root", str(roots["cli"]), "stage", "dataset", "--data", str(digits_dir)]) == 0
    assert vitforge(["--root", str(roots["cli"]), "stage", "pretrain"]) == 0
    res = {**resources(roots["dagster"]), "io_manager": FilesystemIOManager(base_dir=str(roots["dagster"] / ".io"))}
    with DagsterInstance.ephemeral() as instance:
        out = materialize([dataset_asset, pretrained_backbone], resources=res, instance=instance,
                          run_config={"ops": {"dataset": {"config": {"data": str(digits_dir)}}}})
    assert out.success
    cli_state, cli_meta = load_weights(roots["cli"] / "runs" / "pretrain" / "backbone.safetensors")
    dag_state, dag_meta = load_weights(roots["dagster"] / out.output_for_node("pretrained_backbone")["weights"])
    assert cli_meta["dataset_version"] == dag_meta["dataset_version"]
    assert weights_sha256(cli_state) == weights_sha256(dag_state)
