"""Weight-sharing training of the supernet on the labelled train split.

Each step trains, on the same batch, the largest arch (cross-entropy on labels),
the smallest and ``random_archs_per_step`` random archs (the sandwich rule of
BigNAS). With ``distill`` the smaller ones learn the largest's soft predictions
(in-place distillation), which keeps the shared weights good for every subnet.
Batches go through the same small-data recipe as fine-tuning (``pipeline.recipe``),
with the supernet's own knobs. With ``supernet.nproc`` above 1, ``train_supernet`` starts itself under torchrun
(``pipeline/cli_train.py``; every rank samples the same archs per step) and returns rank 0's result.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.data.manifest import load_manifest
from pipeline.data.tensors import load_split, normalize
from pipeline.errors import MissingStageError
from pipeline.launch import launch, needs_launch, processes
from pipeline.models.supernet import Arch, SearchSpace, Supernet
from pipeline.paths import SUPERNET
from pipeline.recipe import BatchAugment, Recipe
from pipeline.training import (
    CheckpointError,
    TrainConfig,
    TrainResult,
    device,
    first_line,
    is_main,
    seed_everything,
    train,
)
from pipeline.weights import load_weights, save_weights

log = logging.getLogger(__name__)


@dataclass
class SupernetResult:
    weights: Path
    checkpoint: Path
    train: TrainResult
    val_top1: dict[str, float]  # arch.short() -> top-1 on val
    archs: dict[str, dict]  # arch.short() -> arch as dict


@torch.no_grad()
def evaluate(model: Supernet, arch: Arch, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Weight-sharing top-1: the supernet run at ``arch``, no training."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch].to(dev), arch)
        correct += int((logits.argmax(-1).cpu() == y[i:i + batch]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


# The only tensors a supernet may lack in an MAE backbone: the classifier, which MAE does not have.
NEW_IN_SUPERNET = ("head.weight", "head.bias")


def read_weights(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``load_weights``, with a missing or unreadable file as a one-line error naming it."""
    if not Path(path).is_file():
        raise MissingStageError(f"{path}: {what} does not exist")
    try:
        return load_weights(path)
    except Exception as err:  # safetensors raises several types for a damaged file; all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read the {what} ({first_line(err)})") from None


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                may_be_new: tuple[str, ...] = ()) -> None:
    """Load every tensor of ``module`` from ``state``; ``may_be_new`` alone may be absent (they keep their init).

    Anything else missing, unexpected or of another shape is a CheckpointError naming the keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in may_be_new]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        problems = [f"{label}: {_some(keys)}" for label, keys in
                    [("missing", missing), ("unexpected", unexpected),
                     (f"wrong shape (checkpoint vs {what})", wrong)] if keys]
        allowed = f"; only {', '.join(may_be_new)} may be new" if may_be_new else ""
        raise CheckpointError(f"{path}: does not fit the {what}{allowed}: " + "; ".join(problems))
    result = module.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(may_be_new), result


def _some(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def load_backbone(net: Supernet, path: Path) -> None:
    """Start ``net`` from MAE encoder weights: every tensor but the new classifier (``NEW_IN_SUPERNET``)."""
    state, _ = read_weights(path, "MAE backbone")
    load_strict(net.vit, state, path, "supernet", NEW_IN_SUPERNET)
    log.info("supernet starts from %s (all %d encoder tensors; %s new)", path, len(state),
             ", ".join(NEW_IN_SUPERNET))


def load_supernet(path: Path) -> tuple[Supernet, dict[str, Any]]:
    state, meta = read_weights(path, "supernet weights")
    space = SearchSpace.from_params(meta["space"], num_classes=int(meta["num_classes"]))
    net = Supernet(space)
    load_strict(net.vit, state, path, "supernet")
    return net.eval(), meta


def eval_archs(space: SearchSpace, n_random: int, seed: int) -> list[Arch]:
    rng = random.Random(seed + 1)
    archs = [space.largest(), space.smallest()]
    while len(archs) < 2 + n_random and len(archs) < len(space.all_archs()):
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
    return archs


def train_supernet(
    data_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
    *,
    backbone: Path | None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> SupernetResult:
    """``backbone``: MAE encoder weights to start from; a path that is missing or does not fit is an error.
    None means random init, asked for explicitly (the stage passes None only for ``supernet.init: random``)."""
    p = params["supernet"]
    if backbone is not None and not Path(backbone).is_file():  # before any data is read
        raise MissingStageError(f"{backbone}: the MAE backbone does not exist; run `vitforge stage pretrain` first")
    cfg = TrainConfig.from_params(p, params["seed"], overrides)
    if needs_launch(params, "supernet"):
        request = {"data_dir": str(data_dir), "out_dir": str(out_dir), "params": params,
                   "backbone": str(backbone) if backbone is not None else None, "resume": resume, "meta": meta,
                   "overrides": overrides}
        reply = launch("supernet", request, processes(params, "supernet"), out_dir, cfg.threads)
        train_res = TrainResult.from_summary(reply["train"])
        return SupernetResult(Path(reply["weights"]), out_dir / "checkpoint.pt", train_res,
                              reply["val_top1"], reply["archs"])
    seed_everything(cfg.seed, cfg.threads)
    manifest = load_manifest(data_dir)
    space = SearchSpace.from_params(params["space"], num_classes=len(manifest.classes))
    size = space.largest().img_size
    mean, std = params["model"]["mean"], params["model"]["std"]
    images, y = load_split(data_dir, "train", size)
    val_images, y_val = load_split(data_dir, "val", size)
    x_val = normalize(val_images, mean, std)
    recipe = Recipe.from_params(p)
    augment = BatchAugment(recipe, len(manifest.classes), mean, std, cfg.seed)

    net = Supernet(space, drop_path_rate=recipe.drop_path)
    if backbone is not None:
        load_backbone(net, backbone)
    else:
        log.info("supernet starts from random init (backbone=None)")

    dev = device()
    net.to(dev)
    largest, smallest = space.largest(), space.smallest()

    def step_loss(model: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        xb, target = augment(images[idx], y[idx], step)
        xb, target = xb.to(dev), target.to(dev)
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the step's archs, reproducible on resume
        logits = model(xb, largest)
        loss = augment.loss(logits, target)
        soft = logits.detach().softmax(-1)
        for arch in [smallest] + [space.sample(rng) for _ in range(p["random_archs_per_step"])]:
            out = model(xb, arch)
            if p["distill"]:
                loss = loss + F.kl_div(out.log_softmax(-1), soft, reduction="batchmean")
            else:
                loss = loss + augment.loss(out, target)
        return loss

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    config = {"space": params["space"], "num_classes": len(manifest.classes), "classes": manifest.classes,
              "supernet": {k: p[k] for k in ("random_archs_per_step", "distill")}, **(meta or {})}
    result = train(net, step_loss, len(images), cfg, checkpoint=ckpt, resume=resume, config=config, desc="supernet")

    archs = eval_archs(space, p["eval_random_archs"], cfg.seed)
    val_top1 = {a.short(): evaluate(net, a, x_val, y_val) for a in archs}
    for name, acc in val_top1.items():
        log.info("val top-1 %-28s %.4f", name, acc)
    weights = out_dir / SUPERNET
    if is_main():
        save_weights(weights, net.vit.state_dict(), {**config, "kind": "supernet"})
    return SupernetResult(weights, ckpt, result, val_top1, {a.short(): a.to_dict() for a in archs})
