"""Stage ``finetune``: the chosen arch as a plain timm model, fine-tuned and tested."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots, replay
from pipeline.finetune.train import finetune
from pipeline.models.supernet import Arch
from pipeline.params import resolve
from pipeline.paths import paths, write_result
from pipeline.stages.common import check_dataset, data_dir, provenance
from pipeline.tracking import Tracker, log_figure, log_file, log_history, log_json


@dataclass
class FinetuneStageResult:
    target: str
    weights: str
    arch: dict[str, Any]
    test_top1: float
    test: dict[str, Any]
    classes: list[str]
    steps: int
    train_seconds: float
    dataset_version: str
    mlflow_run_id: str
    confusion_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str):
    import matplotlib.pyplot as plt
    import numpy as np

    conf = np.array(confusion)
    fig, ax = plt.subplots(figsize=(0.45 * len(classes) + 2.5, 0.45 * len(classes) + 2))
    ax.imshow(conf, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def run_finetune(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any],
                 architecture: dict[str, Any], *, tags: dict[str, str] | None = None, resume: bool = False,
                 overrides: dict[str, Any] | None = None) -> FinetuneStageResult:
    target = architecture["target"]
    arch = Arch(**architecture["arch"])
    out_dir = paths(root, params).finetune_dir(target)
    check_dataset(dataset, root)
    with replay.recording("finetune") as journal, \
            tracker.run("finetune", {"dataset_version": dataset["version"], "target": target, **(tags or {})}) as run:
        import mlflow

        mlflow.log_params({f"arch.{k}": v for k, v in arch.to_dict().items()}
                          | {k: v for k, v in params["finetune"].items() if k != "out_dir"})
        res = finetune(data_dir(dataset, root), out_dir, params, resolve(architecture["supernet_weights"], root), arch,
                       resume=resume, meta={**provenance(dataset, tags), "target": target},
                       overrides=replay.steps_override("finetune", overrides))
        replay.record_steps("finetune", res.train.totals)
        replay.write_sidecar(res.weights, replay.chain(architecture.get("replay"), journal))
        log_history(res.train.history)
        mlflow.log_metrics({"test_top1": res.test.top1, "train_seconds": res.train.seconds,
                            **{f"test_recall.{c}": r for c, r in zip(res.classes, res.test.recall, strict=True)},
                            **{f"test_precision.{c}": p for c, p in zip(res.classes, res.test.precision, strict=True)}})
        log_json(res.test.to_dict(), "test_metrics.json")
        log_figure(plots.curve(res.train.history, f"fine-tuning {arch.short()}", "loss"), "loss_curve.png")
        conf_uri = log_figure(confusion_figure(res.test.confusion, res.classes,
                                               f"test top-1 {res.test.top1:.4f}"), "confusion_matrix.png")
        log_file(res.weights, "weights")
        run_id = run.info.run_id
    result = FinetuneStageResult(target, paths(root, params).rel(res.weights), arch.to_dict(), res.test.top1,
                                 res.test.to_dict(), res.classes, res.train.steps, res.train.seconds,
                                 dataset["version"], run_id, conf_uri)
    write_result(paths(root, params).finetune_result(target), result.to_dict())
    return result
