"""Weight-sharing training of the supernet on the labelled train split.

Each step trains, on the same batch, the largest arch (cross-entropy on labels),
the smallest and ``random_archs_per_step`` random archs (the sandwich rule of
BigNAS). With ``distill`` the smaller ones learn the largest's soft predictions
(in-place distillation), which keeps the shared weights good for every subnet.
Batches go through the same small-data recipe as fine-tuning (``pipeline.recipe``),
with the supernet's own knobs.
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
from pipeline.models.supernet import Arch, SearchSpace, Supernet
from pipeline.recipe import BatchAugment, Recipe
from pipeline.training import TrainConfig, TrainResult, seed_everything, train
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
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch], arch)
        correct += int((logits.argmax(-1) == y[i:i + batch]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


def load_supernet(path: Path) -> tuple[Supernet, dict[str, Any]]:
    state, meta = load_weights(path)
    space = SearchSpace.from_params(meta["space"], num_classes=int(meta["num_classes"]))
    net = Supernet(space)
    net.vit.load_state_dict(state)
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
    p = params["supernet"]
    cfg = TrainConfig.from_params(p, params["seed"], overrides)
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
        state, _ = load_weights(backbone)
        missing, unexpected = net.vit.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"{backbone}: does not fit the supernet (missing {missing}, unexpected {unexpected})")
        log.info("supernet starts from %s", backbone)

    largest, smallest = space.largest(), space.smallest()

    def step_loss(model: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        xb, target = augment(images[idx], y[idx], step)
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
    weights = save_weights(out_dir / "supernet.safetensors", net.vit.state_dict(), {**config, "kind": "supernet"})
    return SupernetResult(weights, ckpt, result, val_top1, {a.short(): a.to_dict() for a in archs})
