"""Fine-tuning of the chosen subnet, warm-started from the supernet's shared weights.

The model is extracted as a plain timm ``VisionTransformer``, trained on the train
split with the shared loop (checkpoints, resume, progress) and the small-data
recipe (``pipeline.recipe``: RandAugment, mixup/cutmix, random erasing, stochastic
depth, layer-wise lr decay, EMA), and evaluated on the test split: top-1,
per-class precision and recall, confusion matrix. With an EMA, the EMA weights
are what ships. With ``finetune.nproc`` above 1, ``finetune`` starts itself under torchrun
(``pipeline/cli_train.py``) and returns rank 0's result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.manifest import load_manifest
from pipeline.data.tensors import load_split, normalize
from pipeline.errors import ParamsError
from pipeline.launch import launch, needs_launch, processes
from pipeline.models.supernet import Arch, build_vit, extract_subnet
from pipeline.nas.supernet_train import load_strict, load_supernet, read_weights
from pipeline.paths import MODEL
from pipeline.recipe import BatchAugment, Recipe
from pipeline.training import (
    CheckpointError,
    TrainConfig,
    TrainResult,
    device,
    is_main,
    seed_everything,
    train,
)
from pipeline.weights import save_weights

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    top1: float
    precision: list[float]
    recall: list[float]
    confusion: list[list[int]]  # [true][predicted]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "precision": self.precision, "recall": self.recall,
                "confusion": self.confusion, "n": self.n}


def evaluation_from_predictions(pred: np.ndarray, y: np.ndarray, num_classes: int) -> Evaluation:
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    tp = np.diag(conf).astype(float)
    precision = tp / np.maximum(conf.sum(axis=0), 1)
    recall = tp / np.maximum(conf.sum(axis=1), 1)
    return Evaluation(float(tp.sum() / max(1, len(y))), precision.tolist(), recall.tolist(), conf.tolist(), len(y))


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits on the CPU, whichever device the model is on."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch].to(dev)).cpu() for i in range(0, len(x), batch)])


@dataclass
class FinetuneResult:
    weights: Path
    checkpoint: Path
    train: TrainResult
    val: Evaluation | None  # what choices are made on (the search's brief fine-tunes); None: trained on val
    test: Evaluation  # reported, never chosen on
    classes: list[str]
    arch: Arch


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fine-tuned timm model from its safetensors file, with its metadata."""
    from pipeline.models.supernet import SearchSpace

    state, meta = read_weights(path, "fine-tuned weights")
    space = SearchSpace.from_params(meta["space"], num_classes=len(meta["classes"]))
    model = build_vit(Arch(**meta["arch"]), space)
    load_strict(model, state, path, "model")
    return model.eval(), meta


def finetune(data_dir: Path, out_dir: Path, params: dict[str, Any], supernet_weights: Path, arch: Arch, *,
             resume: bool = False, meta: dict[str, Any] | None = None,
             overrides: dict[str, Any] | None = None,
             teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
             teacher_weight: float = 0.5, train_on_val: bool | None = None) -> FinetuneResult:
    """``train_on_val`` (default ``finetune.train_on_val``): train on the train and val splits. The arch
    was chosen on val before; the model that ships then learns from every labelled image but the test
    split, and has no val estimate (``val`` is None). The search's brief fine-tunes pass False.

    ``teacher`` (batch -> logits; bench/distill.py) adds DeiT's soft distillation: the loss becomes
    ``(1 - w) * loss + w * KL(student || teacher)`` on the same augmented batch."""
    p = params["finetune"]
    train_on_val = p["train_on_val"] if train_on_val is None else train_on_val
    cfg = TrainConfig.from_params(p, params["seed"], overrides)
    if needs_launch(params, "finetune"):
        if teacher is not None:
            raise ParamsError("params.yaml: finetune.nproc: a teacher (distillation) trains in-process only; "
                              "set finetune.nproc: 1 to distill")
        request = {"data_dir": str(data_dir), "out_dir": str(out_dir), "params": params,
                   "supernet_weights": str(supernet_weights), "arch": arch.to_dict(), "resume": resume,
                   "meta": meta, "overrides": overrides, "train_on_val": train_on_val}
        reply = launch("finetune", request, processes(params, "finetune"), out_dir, cfg.threads)
        train_res = TrainResult.from_summary(reply["train"])
        return FinetuneResult(Path(reply["weights"]), out_dir / "checkpoint.pt", train_res,
                              Evaluation(**reply["val"]) if reply["val"] is not None else None,
                              Evaluation(**reply["test"]), reply["classes"], arch)
    seed_everything(cfg.seed, cfg.threads)
    net, sn_meta = load_supernet(supernet_weights)
    manifest = load_manifest(data_dir)
    if sn_meta["classes"] != manifest.classes:
        raise CheckpointError(f"{supernet_weights}: trained on classes {sn_meta['classes']}, the dataset has "
                              f"{manifest.classes}; train the supernet on this dataset version first")
    recipe = Recipe.from_params(p)
    model = extract_subnet(net, arch, drop_path_rate=recipe.drop_path).train()
    mean, std = params["model"]["mean"], params["model"]["std"]
    images, y = load_split(data_dir, "train", arch.img_size)
    if train_on_val:
        val_images, val_y = load_split(data_dir, "val", arch.img_size)
        images, y = torch.cat([images, val_images]), torch.cat([y, val_y])
    augment = BatchAugment(recipe, len(manifest.classes), mean, std, cfg.seed)
    dev = device()
    model.to(dev)

    def step_loss(m: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        xb, target = augment(images[idx], y[idx], step)
        xb, target = xb.to(dev), target.to(dev)
        out = m(xb)
        if teacher is None:
            return augment.loss(out, target)
        with torch.no_grad():
            soft = teacher(xb).softmax(-1)
        kd = torch.nn.functional.kl_div(out.log_softmax(-1), soft, reduction="batchmean")
        return (1 - teacher_weight) * augment.loss(out, target) + teacher_weight * kd

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    config = {"arch": arch.to_dict(), "space": sn_meta["space"], "classes": manifest.classes,
              "mean": mean, "std": std, "train_splits": ["train", "val"] if train_on_val else ["train"], **(meta or {})}
    result = train(model, step_loss, len(images), cfg, checkpoint=ckpt, resume=resume, config=config,
                   desc="finetune")
    if result.ema is not None:
        model = result.ema

    val, test = (None if split == "val" and train_on_val else
                 evaluate_split(model, data_dir, split, arch.img_size, mean, std, len(manifest.classes))
                 for split in ("val", "test"))
    log.info("fine-tuned %s on %s: val top-1 %s, test top-1 %.4f (%d images)", arch.short(), config["train_splits"],
             "n/a (trained on)" if val is None else f"{val.top1:.4f} ({val.n} images)", test.top1, test.n)
    weights = out_dir / MODEL
    if is_main():
        save_weights(weights, model.state_dict(), {**config, "kind": "timm-vit"})
    return FinetuneResult(weights, ckpt, result, val, test, manifest.classes, arch)


def evaluate_split(model: torch.nn.Module, data_dir: Path, split: str, img_size: int, mean: list[float],
                   std: list[float], num_classes: int) -> Evaluation:
    images, y = load_split(data_dir, split, img_size)
    logits = predict(model, normalize(images, mean, std))
    return evaluation_from_predictions(logits.argmax(-1).numpy(), y.numpy(), num_classes)
