"""The Dagster side of the dataset stage: definitions load, asset and check called directly."""

from __future__ import annotations

from pathlib import Path

from dagster import build_asset_context

from assets.checks import check_dataset_valid
from assets.dataset import DatasetConfig, dataset
from assets.resources import MlflowTracking, ProjectResource


def resources(project: Path) -> dict:
    proj = ProjectResource(root=str(project))
    return {"project": proj, "mlflow": MlflowTracking(project=proj)}


def test_definitions_load():
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "dataset", "pretrained_backbone", "supernet", "architecture", "model", "edge_package"}
    assert defs.resolve_implicit_global_asset_job_def() is not None
    assert defs.resolve_sensor_def("targets_sensor") is not None
    assert defs.resolve_schedule_def("weekly_retrain").cron_schedule == "0 3 * * 0"
    retrain = defs.resolve_job_def("retrain")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == {
        "dataset", "pretrained_backbone", "supernet"}


def test_dataset_asset_and_check(project, digits_dir):
    out = dataset(context=build_asset_context(), config=DatasetConfig(data=str(digits_dir)), **resources(project))
    assert out.value["num_images"] == 1797
    assert out.metadata["dataset_version"].value == out.value["version"]
    assert Path(out.metadata["class_histogram"].value).is_file()

    result = check_dataset_valid(out.value)
    assert result.passed, result.metadata

    # A file changed behind the manifest's back fails the check.
    victim = Path(out.value["tracked_dir"]) / "3" / "digit_0003.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert not check_dataset_valid(out.value).passed
