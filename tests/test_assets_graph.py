"""The Dagster graph: the targets sensor, and a new target materialized end to end (tiny config)."""

from __future__ import annotations

import shutil

from conftest import set_params
from dagster import DagsterInstance, FilesystemIOManager, build_sensor_context, materialize

from assets.architecture import architecture
from assets.dataset import dataset
from assets.partitions import targets_partitions
from assets.resources import MlflowTracking, ProjectResource
from assets.sensors import targets_sensor
from assets.shipping import edge_package, model
from assets.training import pretrained_backbone, supernet
from pipeline.params import PACKAGE_ROOT


def run_sensor(instance, project):
    ctx = build_sensor_context(instance=instance, resources={"project": ProjectResource(root=str(project))})
    result = targets_sensor(ctx)
    for req in getattr(result, "dynamic_partitions_requests", None) or []:
        if type(req).__name__ == "AddDynamicPartitionsRequest":
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        else:
            for key in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, key)
    return result


def test_sensor_adds_and_removes_target_partitions(project):
    folder = project / "infra" / "targets"
    folder.mkdir(parents=True)
    shutil.copy(PACKAGE_ROOT / "infra/targets/cpu-ort-fp32.yaml", folder)
    shutil.copy(PACKAGE_ROOT / "infra/targets/cpu-ort-int8.yaml", folder)
    with DagsterInstance.ephemeral() as instance:
        run_sensor(instance, project)
        assert sorted(instance.get_dynamic_partitions("targets")) == ["cpu-ort-fp32", "cpu-ort-int8"]
        assert type(run_sensor(instance, project)).__name__ == "SkipReason"
        (folder / "cpu-ort-int8.yaml").unlink()
        run_sensor(instance, project)
        assert instance.get_dynamic_partitions("targets") == ["cpu-ort-fp32"]


def test_new_target_file_to_materialized_architecture(tiny_project, digits_dir):
    """Add a YAML file, run the sensor, materialize: the whole graph on a tiny config, to a registered candidate."""
    # Sub-millisecond tiny subnets time noisily: the MAPE gate (tested in test_latency_model) is relaxed here.
    set_params(tiny_project, latency__max_mape=1.0)
    folder = tiny_project / "infra" / "targets"
    folder.mkdir(parents=True)
    (folder / "edge-box.yaml").write_text("runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\n"
                                          "batch_size: 1\nlatency_budget_ms: 50\n")
    proj = ProjectResource(root=str(tiny_project))
    resources = {"project": proj, "mlflow": MlflowTracking(project=proj),
                 "io_manager": FilesystemIOManager(base_dir=str(tiny_project / ".dagster"))}
    run_config = {"ops": {"dataset": {"config": {"data": str(digits_dir)}}}}
    graph = [dataset, pretrained_backbone, supernet, architecture, model, edge_package]
    with DagsterInstance.ephemeral() as instance:
        run_sensor(instance, tiny_project)
        assert instance.get_dynamic_partitions(targets_partitions.name) == ["edge-box"]
        base = materialize(graph[:3], resources=resources, instance=instance, run_config=run_config)
        assert base.success
        result = materialize(graph, selection=graph[3:], partition_key="edge-box", resources=resources,
                             instance=instance)
        assert result.success
        arch = result.output_for_node("architecture")
        assert arch["target"] == "edge-box" and arch["measured_p50_ms"] <= 50
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["check_architecture_within_budget"]
        assert "check_architecture_latency_model_error" in checks
        pkg = result.output_for_node("edge_package")
        assert pkg["registered_version"] == "1" and pkg["candidate_alias"] == "candidate-edge-box"
        assert all(checks[name] for name in ("check_edge_package_parity", "check_edge_package_latency_budget",
                                             "check_edge_package_accuracy_vs_champion"))
