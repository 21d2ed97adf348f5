"""Asset ``architecture[target]``: the most accurate subnet that meets the target's budget, measured."""

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from assets.metadata import mlflow_run, pareto_table, plots
from assets.partitions import partitioned_check, targets_partitions
from assets.resources import MlflowTracking, ProjectResource
from pipeline.paths import paths
from pipeline.stages.search import run_search


class ArchitectureConfig(Config):
    """Run settings only: the arch itself flows to ``model`` as data."""

    refit_latency_model: bool = False


@asset(
    group_name="search", partitions_def=targets_partitions,
    description="Latency model fitted on the target, evolutionary search under its budget, chosen arch measured.",
    check_specs=[
        partitioned_check("check_architecture_latency_model_error", "architecture",
                          "Latency-model MAPE on held-out subnets within latency.max_mape, judged beside the "
                          "measurement noise"),
        partitioned_check("check_architecture_within_budget", "architecture",
                          "The chosen arch's measured p50 is within the target's budget"),
    ],
)
def architecture(context: AssetExecutionContext, config: ArchitectureConfig, dataset: dict, supernet: dict,
                 project: ProjectResource, mlflow: MlflowTracking):
    target = context.partition_key
    params = project.params()
    if config.refit_latency_model:
        paths(project.path, params).latency_model(target).unlink(missing_ok=True)
    tracker = mlflow.tracker()
    res = run_search(project.path, params, tracker, dataset, supernet["weights"], target,
                     tags={"dagster_run_id": context.run_id})
    context.log.info(f"{target}: chose {res.arch} (val top-1 {res.val_top1:.4f}, p50 {res.measured_p50_ms:.3f} ms)")
    output, checks = architecture_events(res, tracker, params)
    if output is None:  # the checks fail for this partition, and no materialization claims it is good
        yield from checks
        raise Failure(f"{target}: gate(s) failed: {', '.join(res.failed_gates)} ({res.latency_verdict}; p50 "
                      f"{res.measured_p50_ms:.3f} ms, budget {res.budget_ms:g} ms)",
                      metadata=mlflow_run(tracker, res.mlflow_run_id))
    yield output
    yield from checks


def architecture_events(res, tracker, params: dict) -> tuple[Output | None, list[AssetCheckResult]]:
    """The asset's value (None when a gate failed) and its checks for a search stage result (also what the
    CLI records)."""
    checks = [
        AssetCheckResult(
            check_name="check_architecture_latency_model_error", passed=res.latency_passed,
            metadata={"mape": res.latency_mape, "noise": res.latency_noise, "max_error": res.latency_max_error,
                      "threshold": params["latency"]["max_mape"], "verdict": res.latency_verdict}),
        AssetCheckResult(
            check_name="check_architecture_within_budget", passed=res.measured_p50_ms <= res.budget_ms,
            metadata={"measured_p50_ms": res.measured_p50_ms, "budget_ms": res.budget_ms,
                      "tried": MetadataValue.json(res.tried)}),
    ]
    if not res.passed:
        return None, checks
    return Output(res.to_dict(), metadata={
        "arch": MetadataValue.json(res.arch), "val_top1": res.val_top1,
        "measured_p50_ms": res.measured_p50_ms, "budget_ms": res.budget_ms,
        "speedup_vs_largest": res.largest_p50_ms / res.measured_p50_ms,
        "latency_model_mape": res.latency_mape, "pareto_front": pareto_table(res.front),
        **plots(tracker, res.mlflow_run_id, pareto_plot=res.pareto_uri, latency_model_plot=res.latency_scatter_uri),
        **mlflow_run(tracker, res.mlflow_run_id),
    }), checks
