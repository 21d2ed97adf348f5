"""The Dagster side of the dataset stage: definitions load, asset and check called directly."""

from __future__ import annotations

from pathlib import Path

from conftest import set_params
from dagster import build_asset_context

from assets.checks import check_dataset_valid
from assets.dataset import DatasetConfig, dataset
from assets.resources import MlflowTracking, ProjectResource
from pipeline.data.fingerprint import content_hash


def resources(project: Path) -> dict:
    proj = ProjectResource(root=str(project))
    return {"project": proj, "mlflow": MlflowTracking(project=proj)}


def test_definitions_load():
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "dataset", "pretrained_backbone", "supernet", "architecture", "model", "edge_package"}
    assert defs.resolve_implicit_global_asset_job_def() is not None
    for name in ("targets_sensor", "data_change_sensor", "retrain_targets_sensor"):
        assert defs.resolve_sensor_def(name) is not None
    assert defs.resolve_job_def("ship_target").partitions_def.name == "targets"
    assert defs.resolve_schedule_def("weekly_retrain").cron_schedule == "0 3 * * 0"
    retrain = defs.resolve_job_def("retrain")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == {
        "dataset", "pretrained_backbone", "supernet"}


def test_dataset_asset_and_check(project, digits_dir):
    out = dataset(context=build_asset_context(), config=DatasetConfig(data=str(digits_dir)), **resources(project))
    assert out.value["num_images"] == 1797
    assert out.metadata["dataset_version"].value == out.value["version"]
    # the plot renders inline in the UI: markdown whose image the MLflow UI serves from the run's artifacts
    run_id = out.metadata["mlflow_run_id"].value
    assert out.metadata["class_histogram"].value.startswith(
        f"![class_histogram.png](http://127.0.0.1:5000/get-artifact?path=class_histogram.png&run_uuid={run_id})")

    assert out.value["tracked_dir"] == "data/dataset"  # recorded relative to the project root
    result = check_dataset_valid(out.value, resources(project)["project"])
    assert result.passed, result.metadata

    # A file changed behind the manifest's back fails the check.
    victim = project / out.value["tracked_dir"] / "3" / "digit_0003.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert not check_dataset_valid(out.value, resources(project)["project"]).passed


def test_data_change_sensor_starts_retrain_once_per_change_of_content(project, imagefolder):
    import os

    from conftest import png
    from dagster import DagsterInstance, build_sensor_context, materialize

    from assets.sensors import data_change_sensor

    set_params(project, dataset__data=str(imagefolder))
    res = resources(project)
    with DagsterInstance.ephemeral() as instance:
        def tick(cursor: str | None):
            with build_sensor_context(instance=instance, resources=res, cursor=cursor) as ctx:
                out = data_change_sensor(ctx)
                return out, ctx.cursor

        first, cursor = tick(None)  # never versioned: retrain
        assert type(first).__name__ == "RunRequest"
        assert first.tags["source_hash"] == content_hash(imagefolder)
        assert materialize([dataset], resources=res, instance=instance).success  # the run's dataset step, from params
        unchanged, cursor = tick(cursor)
        assert type(unchanged).__name__ == "SkipReason" and "unchanged" in unchanged.skip_message

        victim = imagefolder / "ants" / "ants_0.png"
        os.utime(victim, ns=(1, 1))  # touched, same bytes: no retrain
        touched, cursor = tick(cursor)
        assert type(touched).__name__ == "SkipReason"
        png(imagefolder / "bees" / "bees_new.png", seed=99)  # new data
        changed, cursor = tick(cursor)
        assert type(changed).__name__ == "RunRequest" and changed.run_key != first.run_key
        again, cursor = tick(cursor)  # while that run has not versioned it yet: the same run key, deduplicated
        assert again.run_key == changed.run_key
        (imagefolder / ".DS_Store").write_bytes(b"finder")  # hidden files are not data
        assert tick(cursor)[0].run_key == changed.run_key


def test_bad_input_through_the_dataset_asset_names_the_file_and_versions_nothing(project, imagefolder):
    from dagster import DagsterInstance, materialize

    from pipeline.data.errors import DatasetError

    res = resources(project)
    with DagsterInstance.ephemeral() as instance:
        first = materialize([dataset], resources=res, instance=instance,
                            run_config={"ops": {"dataset": {"config": {"data": str(imagefolder)}}}})
        assert first.success
        pointer = project / "data" / "dataset.dvc"
        before = pointer.read_text()
        (imagefolder / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        failed = materialize([dataset], resources=res, instance=instance, raise_on_error=False,
                             run_config={"ops": {"dataset": {"config": {"data": str(imagefolder)}}}})
    assert not failed.success
    [step_failure] = [e for e in failed.all_events if e.is_step_failure]
    error = step_failure.step_failure_data.error
    error = error.cause or error  # Dagster wraps what the asset raised
    assert error.cls_name == DatasetError.__name__ and "broken.png" in error.message
    assert pointer.read_text() == before  # the version already recorded is untouched
