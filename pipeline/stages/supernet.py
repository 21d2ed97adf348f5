"""Stage ``supernet``: weight-sharing training from the MAE weights, per-arch val top-1 to MLflow."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots, replay
from pipeline.errors import MissingStageError, ParamsError
from pipeline.nas.space_fit import resolve_space
from pipeline.nas.supernet_train import read_weights, train_supernet
from pipeline.params import resolve
from pipeline.paths import paths
from pipeline.stages.common import check_dataset, data_dir, provenance
from pipeline.tracking import Tracker, log_figure, log_file, log_history, log_json

log = logging.getLogger(__name__)


@dataclass
class SupernetStageResult:
    weights: str
    dataset_version: str
    steps: int
    val_top1: dict[str, float]
    archs: dict[str, dict]
    mlflow_run_id: str
    loss_curve_uri: str
    val_top1_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


INIT_CHOICES = ("mae", "random")


def backbone_to_start_from(root: Path, params: dict[str, Any], backbone: str | None) -> Path | None:
    """The MAE weights the supernet starts from, per params.yaml ``supernet.init``; None: random init.

    ``mae`` (the default): ``backbone``, or the pretrain stage's file when None is given; either must exist,
    else a MissingStageError names it. ``random``: None, whatever ``backbone`` says."""
    init = params["supernet"]["init"]
    if init not in INIT_CHOICES:
        raise ParamsError(f"params.yaml: supernet.init: expected one of {list(INIT_CHOICES)}, got {init!r}")
    if init == "random":
        if backbone:
            log.info("supernet.init is random: not starting from %s", backbone)
        return None
    path = resolve(backbone, root) if backbone else paths(root, params).backbone()
    if not path.is_file():
        raise MissingStageError(f"{path}: no MAE backbone to start the supernet from; run `vitforge stage "
                                "pretrain` first, or set supernet.init: random in params.yaml to start from "
                                "random weights")
    return path


def run_supernet(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any],
                 backbone: str | None, *, tags: dict[str, str] | None = None, resume: bool = False,
                 overrides: dict[str, Any] | None = None) -> SupernetStageResult:
    p = params["supernet"]
    out_dir = paths(root, params).supernet_dir()
    start = backbone_to_start_from(root, params, backbone)
    check_dataset(dataset, root)
    with replay.recording("supernet") as journal, \
            tracker.run("supernet", {"dataset_version": dataset["version"], **(tags or {})}) as run:
        import mlflow

        upstream = read_weights(start, "MAE backbone")[1].get("space") if start else None
        params = {**params, "space": resolve_space(params, root, data_dir(dataset, root), upstream).space}
        mlflow.log_params({k: v for k, v in p.items() if k != "out_dir"}
                          | {"backbone": paths(root, params).rel(start) if start else "random init",
                             "space": params["space"]})
        res = train_supernet(data_dir(dataset, root), out_dir, params, backbone=start, resume=resume,
                             meta=provenance(dataset, tags), overrides=replay.steps_override("supernet", overrides))
        replay.record_steps("supernet", res.train.totals)
        replay.write_sidecar(res.weights, replay.chain(replay.read_sidecar(start), journal))
        log_history(res.train.history)
        mlflow.log_metrics({f"val_top1.{name}": acc for name, acc in res.val_top1.items()})
        mlflow.log_metric("images_per_s", res.train.images_per_s)
        table = [{"arch": name, **res.archs[name], "val_top1": acc} for name, acc in res.val_top1.items()]
        mlflow.log_table({k: [row[k] for row in table] for k in table[0]}, "val_top1.json")
        log_json(table, "val_top1_table.json")
        curve_uri = log_figure(plots.curve(res.train.history, "supernet (sandwich rule)", "summed loss"),
                               "loss_curve.png")
        top1_uri = log_figure(plots.bar_table(res.val_top1, "supernet: val top-1 per arch", "top-1"),
                              "val_top1.png")
        log_file(res.weights, "checkpoint")
        run_id = run.info.run_id
    return SupernetStageResult(paths(root, params).rel(res.weights), dataset["version"], res.train.steps,
                               res.val_top1, res.archs, run_id, curve_uri, top1_uri)
