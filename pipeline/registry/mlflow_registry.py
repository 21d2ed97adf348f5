"""Register an edge package in the MLflow model registry: a version with tags, and aliases.

One registered model per dataset (``registry.model_name``); aliases are per target:
``candidate-<target>``, ``champion-<target>`` (and ``fleet-<name>`` for fleets).
Aliases and version tags only: never the deprecated stages.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export.package import EdgePackage
from pipeline.weights import sha256_file

log = logging.getLogger(__name__)


def alias(kind: str, target: str) -> str:
    return f"{kind}-{target}"


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def champion_of(model_name: str, target: str) -> dict[str, Any] | None:
    """{"version", "test_top1"} of the target's champion, or None when there is none."""
    from mlflow.exceptions import MlflowException

    import mlflow

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(model_name, alias("champion", target))
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return {"version": str(mv.version), "test_top1": float(mv.tags["test_top1"])}


def register_package(pkg: EdgePackage, model_name: str, tags: dict[str, str]) -> str:
    """Log the ONNX model (signature + input example) in the active run, register it, tag it,
    and point ``candidate-<target>`` at it. Returns the version."""
    import onnx
    from mlflow.models import infer_signature

    import mlflow

    size = pkg.arch["img_size"]
    example = np.zeros((1, size, size, 3), dtype=np.uint8)
    logits = np.zeros((1, len(pkg.classes)), dtype=np.float32)
    info = mlflow.onnx.log_model(
        onnx.load(str(pkg.onnx)), name="model", registered_model_name=model_name,
        signature=infer_signature(example, logits), input_example=example,
        extra_files=[str(pkg.folder / f) for f in ("label_map.json", "package.json")],
        onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
    )
    mlflow.log_artifacts(str(pkg.folder), "edge_package")  # weights, reports, manifest, as shipped
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, alias("candidate", pkg.target), version)
    log.info("registered %s version %s as %s", model_name, version, alias("candidate", pkg.target))
    return version


def version_tags(pkg: EdgePackage, *, dataset_version: str, git_sha: str, dagster_run_id: str, params: dict,
                 test_top1: float, latency_mape: float | None) -> dict[str, str]:
    lat = pkg.latency
    tags = {
        "target": pkg.target, "arch": json.dumps(pkg.arch, sort_keys=True), "dataset_version": dataset_version,
        "git_sha": git_sha, "dagster_run_id": dagster_run_id, "params_hash": params_hash(params),
        "latency_p50_ms": f"{lat.p50_ms:.4f}", "latency_p99_ms": f"{lat.p99_ms:.4f}",
        "latency_how": json.dumps(lat.how, sort_keys=True),
        "parity_max_abs_diff": f"{pkg.parity.max_abs_diff:.3e}",
        "parity_top1_agreement": f"{pkg.parity.top1_agreement:.4f}",
        "test_top1": f"{test_top1:.4f}", "precision": pkg.parity.precision,
        "latency_model_mape": "" if latency_mape is None else f"{latency_mape:.4f}",
    }
    tags.update({f"sha256.{name}": digest for name, digest in pkg.files_sha256.items()})
    manifest = pkg.folder / "package.json"  # written after the others; the edge agent verifies it too
    if manifest.is_file():
        tags["sha256.package.json"] = sha256_file(manifest)
    return tags


def load_registered(model_name: str, ref: str) -> Path:
    """Download a registered version (``ref`` = version number or alias) and return its folder."""
    import mlflow

    uri = f"models:/{model_name}@{ref}" if not ref.isdigit() else f"models:/{model_name}/{ref}"
    return Path(mlflow.artifacts.download_artifacts(uri))
