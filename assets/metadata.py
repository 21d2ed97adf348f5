"""Dagster metadata as a user wants it in the UI: links that open the MLflow UI, plots inline, tables.

Links point at the MLflow UI: the tracking server itself when MLflow runs as one, else the UI that
``vitforge serve`` starts beside Dagster (params.yaml ``mlflow.ui_url``). A plot is markdown with the PNG
served by that UI (``/get-artifact``), so it renders in the asset's metadata.
"""

from typing import Any
from urllib.parse import quote

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

DEFAULT_UI_URL = "http://127.0.0.1:5000"


def ui_url(tracker) -> str:
    """The MLflow UI a person opens for ``tracker``'s store."""
    if tracker.tracking_uri.startswith(("http://", "https://")):
        return tracker.tracking_uri.rstrip("/")
    return (getattr(tracker, "ui_url", None) or DEFAULT_UI_URL).rstrip("/")


def _experiment_id(run_id: str) -> str:
    import mlflow

    return mlflow.get_run(run_id).info.experiment_id


def mlflow_run(tracker, run_id: str) -> dict[str, MetadataValue]:
    """The run id, and a link to its page in the MLflow UI."""
    url = f"{ui_url(tracker)}/#/experiments/{_experiment_id(run_id)}/runs/{run_id}"
    return {"mlflow_run_id": MetadataValue.text(run_id), "mlflow_run": MetadataValue.url(url)}


def registered_version_link(tracker, model_name: str, version: str) -> dict[str, MetadataValue]:
    """A link to a registered version's page (its tags and aliases) in the MLflow UI."""
    return {"registered_version_page": MetadataValue.url(
        f"{ui_url(tracker)}/#/models/{quote(model_name)}/versions/{version}")}


def artifact(tracker, run_id: str, uri: str) -> MetadataValue:
    """A PNG logged to ``run_id`` (``uri``, as ``log_figure`` returned it), shown inline; its file beside it."""
    marker = f"{run_id}/artifacts/"
    if marker not in uri:
        return MetadataValue.url(uri)
    path = uri.split(marker, 1)[1]
    src = f"{ui_url(tracker)}/get-artifact?path={quote(path)}&run_uuid={run_id}"
    return MetadataValue.md(f"![{path}]({src})\n\n[{path}]({src}) · MLflow run `{run_id}`")


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> MetadataValue:
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns])
    return MetadataValue.table([TableRecord({name: row.get(name) for name, _ in columns}) for row in rows],
                               schema=schema)


def pareto_table(front: list[dict[str, Any]]) -> MetadataValue:
    """The Pareto front of a search: one row per arch, fastest first."""
    rows = [{"img_size": c["arch"].get("img_size"), "depth": c["arch"].get("depth"),
             "embed_dim": c["arch"].get("embed_dim"), "mlp_ratio": float(c["arch"].get("mlp_ratio", 0.0)),
             "predicted_ms": round(float(c["predicted_ms"]), 4), "val_top1": round(float(c["top1"]), 4)}
            for c in sorted(front, key=lambda c: c["predicted_ms"])]
    return _table(rows, [("img_size", "int"), ("depth", "int"), ("embed_dim", "int"), ("mlp_ratio", "float"),
                         ("predicted_ms", "float"), ("val_top1", "float")])


def latency_table(report: dict[str, Any]) -> MetadataValue:
    """A package's latency report: the percentiles, and how they were measured."""
    how = report.get("how", {})
    rows = [{"stat": k, "ms": round(float(report[k]), 4)} for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
    rows += [{"stat": f"{k}: {v}", "ms": None} for k, v in sorted(how.items())]
    rows.append({"stat": f"runs {report['runs']} after {report['warmup']} warm-up", "ms": None})
    return _table(rows, [("stat", "string"), ("ms", "float")])


def plots(tracker, run_id: str, **uris: str) -> dict[str, MetadataValue]:
    """``name=uri`` of PNGs logged to ``run_id``, each shown inline (``artifact``)."""
    return {name: artifact(tracker, run_id, uri) for name, uri in uris.items()}
