"""Stage ``package``: edge package for a target, its gates, and (only if all pass) registration.

Provenance is checked first: a project root outside a git checkout is refused (ProvenanceError)
before anything is built, unless ``allow_dirty``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots, replay
from pipeline.export.package import build_package
from pipeline.params import overrides, resolve
from pipeline.paths import paths, write_result
from pipeline.registry.gates import champion_gate, latency_gate, parity_gate
from pipeline.registry.mlflow_registry import (
    alias,
    champion_of,
    git_provenance,
    register_package,
    score_registered,
    version_tags,
)
from pipeline.stages.common import check_dataset, data_dir, mark_failed
from pipeline.stages.common import model_name as registered_name
from pipeline.stages.search import resolve_target
from pipeline.tracking import Tracker, log_figure, log_json

REPLAY_ARTIFACT = "replay.json"  # in the package stage's MLflow run: what `vitforge rebuild` replays
WEIGHTS_TAG = "sha256.weights_tensors"  # the fine-tuned weights' tensor digest (pipeline.weights.weights_sha256)


def tensor_digest(path: Path) -> str:
    from pipeline.weights import load_weights, weights_sha256

    return weights_sha256(load_weights(path)[0])


@dataclass
class PackageStageResult:
    target: str
    package: dict[str, Any]
    gates: list[dict[str, Any]]
    registered_model: str
    registered_version: str | None  # None: a gate failed and nothing was registered
    candidate_alias: str
    test_top1: float
    p50_ms: float
    p99_ms: float
    mlflow_run_id: str
    latency_histogram_uri: str

    @property
    def passed(self) -> bool:
        return all(g["passed"] for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_package(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any], model: dict[str, Any],
                architecture: dict[str, Any] | None, target_name: str, *,
                tags: dict[str, str] | None = None, allow_dirty: bool = False) -> PackageStageResult:
    """``allow_dirty``: register even when ``root`` is not in a git checkout (the version records why it has
    no git SHA); otherwise that raises ProvenanceError here, before the build."""
    git = git_provenance(root, allow_dirty=allow_dirty, besides=(paths(root, params).dataset_pointer(),))
    target, _ = resolve_target(root, params, target_name)
    check_dataset(dataset, root)  # the folder still holds the version it claims
    out_dir = paths(root, params).package_dir(target.name)
    data = data_dir(dataset, root)
    model_name = registered_name(root, params, data)
    run_tags = {"dataset_version": dataset["version"], "target": target.name, **(tags or {})}
    with replay.recording("package") as journal, tracker.run("package", run_tags) as run:
        import mlflow

        weights = resolve(model["weights"], root)
        pkg = build_package(weights, data, out_dir, target, params, root=root)
        lat, par = pkg.latency, pkg.parity
        # The champion's own package, scored on the candidate's test split: the same images for both.
        champion_version = champion_of(model_name, target.name)
        champion = None if champion_version is None else score_registered(
            model_name, champion_version, data, pkg.classes, target.threads)
        remeasured = []
        if lat.p50_ms > target.latency_budget_ms:  # over budget once: measured again before it fails (bounded)
            import time

            from pipeline.targets.latency import measure_latency

            ex = params["export"]
            for _ in range(ex["latency_remeasure"]):
                time.sleep(0.2)  # apart in time, so that one slow spell of a shared machine does not decide
                remeasured.append(measure_latency(pkg.onnx, target, input_size=pkg.arch["img_size"],
                                                  warmup=ex["warmup"], runs=ex["runs"]).p50_ms)
        gates = [parity_gate(par, params["export"]),
                 latency_gate(lat.p50_ms, lat.p99_ms, target.latency_budget_ms, remeasured),
                 champion_gate(par.engine_test_top1, champion, params["registry"]["champion_tolerance"])]
        mlflow.log_params({"target": target.name, "precision": target.precision, "optimizer": pkg.optimizer,
                           **{f"arch.{k}": v for k, v in pkg.arch.items()}})
        mlflow.log_metrics({"latency_p50_ms": lat.p50_ms, "latency_p90_ms": lat.p90_ms, "latency_p99_ms": lat.p99_ms,
                            "parity_max_abs_diff": par.max_abs_diff, "parity_top1_agreement": par.top1_agreement,
                            "engine_test_top1": par.engine_test_top1, "torch_test_top1": par.torch_test_top1,
                            **{f"gate.{g.name}": float(g.passed) for g in gates}})
        hist_uri = log_figure(plots.histogram(lat.samples_ms, f"{target.name}: {lat.runs} runs after {lat.warmup} "
                                              f"warm-up", "latency (ms)"), "latency_histogram.png")
        log_json(lat.to_dict(), "latency_report.json")
        log_json(par.to_dict(), "parity_report.json")
        log_json([g.to_dict() for g in gates], "gates.json")
        upstream = replay.read_sidecar(weights)  # what the chain decided by the clock: for rebuilds
        chain = None if upstream is None else {**replay.chain(upstream, journal),
                                                "weights_sha256": upstream["weights_sha256"]}
        if chain is not None:
            log_json(chain, REPLAY_ARTIFACT)
        version = None
        if all(g.passed for g in gates):
            mape = architecture.get("latency_mape") if architecture else None
            version = register_package(pkg, model_name, version_tags(
                pkg, dataset_version=dataset["version"], git_sha=git.sha, git_dirty=git.dirty,
                dagster_run_id=(tags or {}).get("dagster_run_id", ""), params=params,
                test_top1=par.engine_test_top1, latency_mape=mape) | {
                    WEIGHTS_TAG: chain["weights_sha256"] if chain else tensor_digest(weights),
                    "replay": REPLAY_ARTIFACT if chain else "none: the fine-tuned weights had no replay record",
                    "params_set": json.dumps(overrides(), sort_keys=True)})  # `--set`, for a rebuild to apply
        mlflow.set_tag("registered_version", version or "none: a gate failed")
        run_id = run.info.run_id
    result = PackageStageResult(target.name, pkg.to_dict(paths(root, params).rel), [g.to_dict() for g in gates],
                                model_name, version, alias("candidate", target.name), par.engine_test_top1, lat.p50_ms,
                                lat.p99_ms, run_id, hist_uri)
    if not result.passed:
        mark_failed(run_id, [g["name"] for g in result.gates if not g["passed"]])
    write_result(paths(root, params).package_result(target.name), result.to_dict())
    return result
