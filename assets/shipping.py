"""Assets ``model[target]`` (fine-tuned subnet) and ``edge_package[target]`` (proven, registered)."""

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.metadata import latency_table, mlflow_run, plots, registered_version_link
from assets.partitions import partitioned_check, targets_partitions
from assets.resources import MlflowTracking, ProjectResource
from pipeline.stages.finetune import run_finetune
from pipeline.stages.package import run_package

GATES = ["check_edge_package_parity", "check_edge_package_latency_budget", "check_edge_package_accuracy_vs_champion"]


class ModelConfig(Config):
    """Unset fields take params.yaml ``finetune:`` at run time."""

    epochs: int | None = Field(default=None, description="passes over the train split (default: params.yaml)")
    lr: float | None = None
    resume: bool = Field(default=False, description="continue from the last checkpoint")


class EdgePackageConfig(Config):
    allow_dirty: bool = Field(default=False, description="register even when the project root is not a git "
                                                         "checkout (the version records why)")


@asset(group_name="ship", partitions_def=targets_partitions,
       description="The chosen subnet as a plain timm ViT, fine-tuned and evaluated on the test split.")
def model(context: AssetExecutionContext, config: ModelConfig, dataset: dict, architecture: dict,
          project: ProjectResource, mlflow: MlflowTracking) -> Output[dict]:
    tracker = mlflow.tracker()
    res = run_finetune(project.path, project.params(), tracker, dataset, architecture,
                       tags={"dagster_run_id": context.run_id}, resume=config.resume,
                       overrides={"epochs": config.epochs, "lr": config.lr})
    context.log.info(f"{res.target}: test top-1 {res.test_top1:.4f}")
    return model_output(res, tracker)


@asset(group_name="ship", partitions_def=targets_partitions,
       description="ONNX (+ engine) proven on the target: parity, latency; registered as candidate if all pass.",
       check_specs=[partitioned_check(name, "edge_package") for name in GATES])
def edge_package(context: AssetExecutionContext, config: EdgePackageConfig, dataset: dict, model: dict,
                 architecture: dict, project: ProjectResource, mlflow: MlflowTracking):
    tracker = mlflow.tracker()
    res = run_package(project.path, project.params(), tracker, dataset, model, architecture, context.partition_key,
                      tags={"dagster_run_id": context.run_id}, allow_dirty=config.allow_dirty)
    context.log.info(f"{res.target}: p50 {res.p50_ms:.3f} ms, top-1 {res.test_top1:.4f}, "
                     f"registered version {res.registered_version}")
    output, checks = edge_package_events(res, tracker)
    if output is None:  # nothing registered: the partition shows the failed checks, not a good package
        yield from checks
        raise Failure(f"{res.target}: gate(s) failed: {', '.join(g['name'] for g in res.gates if not g['passed'])}; "
                      "nothing registered, no alias moved", metadata=mlflow_run(tracker, res.mlflow_run_id))
    yield output
    yield from checks


def model_output(res, tracker) -> Output[dict]:
    """The asset's value and metadata for a finetune stage result (also what the CLI records)."""
    return Output(res.to_dict(), metadata={
        "test_top1": res.test_top1, "arch": MetadataValue.json(res.arch), "weights": MetadataValue.path(res.weights),
        **plots(tracker, res.mlflow_run_id, confusion_matrix=res.confusion_uri),
        **mlflow_run(tracker, res.mlflow_run_id)})


def edge_package_events(res, tracker) -> tuple[Output | None, list[AssetCheckResult]]:
    """The asset's value (None when a gate failed: nothing was registered) and its checks for a package stage
    result (also what the CLI records)."""
    checks = [AssetCheckResult(check_name=g["name"], passed=g["passed"],
                               metadata={k: v for k, v in g["details"].items() if isinstance(v, (int, float, str))})
              for g in res.gates]
    if not res.passed:
        return None, checks
    return Output(res.to_dict(), metadata={
        "registered_model": res.registered_model, "registered_version": res.registered_version,
        **registered_version_link(tracker, res.registered_model, res.registered_version),
        "latency_p50_ms": res.p50_ms, "latency_p99_ms": res.p99_ms, "test_top1": res.test_top1,
        "package": MetadataValue.path(res.package["folder"]), "latency_report": latency_table(res.package["latency"]),
        **plots(tracker, res.mlflow_run_id, latency_histogram=res.latency_histogram_uri),
        **mlflow_run(tracker, res.mlflow_run_id)}), checks
