"""Stage ``pretrain``: MAE pre-training of the largest encoder, logged to MLflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import plots, replay
from pipeline.nas.space_fit import resolve_space
from pipeline.paths import paths
from pipeline.ssl.train import pretrain
from pipeline.stages.common import check_dataset, data_dir, provenance
from pipeline.tracking import Tracker, log_figure, log_file, log_history, log_json


@dataclass
class PretrainStageResult:
    weights: str
    dataset_version: str
    steps: int
    final_loss: float
    images_per_s: float
    mlflow_run_id: str
    loss_curve_uri: str
    reconstructions_uri: str
    space: dict[str, Any]  # the concrete search space (fitted when params.yaml says auto)
    space_fit: dict[str, Any]  # how it was fitted: target, budget, native size, every measurement

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconstruction_figure(res, mean: list[float], std: list[float], n: int = 8):
    model = res.model.eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(res.images), generator=g)[:n]
    imgs = res.images[idx]
    with torch.no_grad():
        torch.manual_seed(0)
        _, pred, mask = model(imgs)
        masked, recon = model.reconstruct(imgs, pred, mask)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def to_np(t: torch.Tensor):
        return (t * s + m).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) in [0, 1]

    return plots.image_rows({"masked": to_np(masked), "reconstruction": to_np(recon), "original": to_np(imgs)},
                            "MAE: masked input, reconstruction, original")


def run_pretrain(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any], *,
                 tags: dict[str, str] | None = None, resume: bool = False,
                 overrides: dict[str, Any] | None = None) -> PretrainStageResult:
    p = params["pretrain"]
    out_dir = paths(root, params).pretrain_dir()
    check_dataset(dataset, root)
    with replay.recording("pretrain") as journal, \
            tracker.run("pretrain", {"dataset_version": dataset["version"], **(tags or {})}) as run:
        import mlflow

        fit = resolve_space(params, root, data_dir(dataset, root))
        params = {**params, "space": fit.space}
        mlflow.log_params({k: v for k, v in p.items() if k != "out_dir"} | {"arch": params["space"]})
        log_json(fit.to_dict(), "space_fit.json")
        if fit.fastest_ms is not None:
            mlflow.log_metrics({"space.fastest_ms": fit.fastest_ms, "space.largest_ms": fit.largest_ms})
        res = pretrain(data_dir(dataset, root), out_dir, params, resume=resume,
                       meta=provenance(dataset, tags), overrides=replay.steps_override("pretrain", overrides))
        replay.record_steps("pretrain", res.train.totals)
        replay.write_sidecar(res.weights, replay.chain(None, journal))
        log_history(res.train.history)
        mlflow.log_metrics({"final_loss": res.train.history[-1], "images_per_s": res.train.images_per_s,
                            "train_seconds": res.train.seconds})
        curve_uri = log_figure(plots.curve(res.train.history, "MAE pre-training", "loss (masked patches)"),
                               "loss_curve.png")
        recon_uri = log_figure(reconstruction_figure(res, params["model"]["mean"], params["model"]["std"]),
                               "reconstructions.png")
        log_file(res.weights, "checkpoint")
        run_id = run.info.run_id
    return PretrainStageResult(paths(root, params).rel(res.weights), dataset["version"], res.train.steps,
                               res.train.history[-1], res.train.images_per_s, run_id, curve_uri, recon_uri, fit.space,
                               fit.to_dict())
