"""Fine-tuning of the chosen subnet, warm-started from the supernet's shared weights.

The model is extracted as a plain timm ``VisionTransformer``, trained on the train
split with the shared loop (checkpoints, resume, progress), and evaluated on the
test split: top-1, per-class precision and recall, confusion matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.manifest import load_manifest
from pipeline.data.tensors import load_split, normalize
from pipeline.models.supernet import Arch, build_vit, extract_subnet
from pipeline.nas.supernet_train import load_supernet
from pipeline.training import TrainConfig, TrainResult, seed_everything, train
from pipeline.weights import load_weights, save_weights

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
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (reflect padding): cheap, label-preserving."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dx = torch.randint(0, 2 * max_shift + 1, (b,))
    dy = torch.randint(0, 2 * max_shift + 1, (b,))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@dataclass
class FinetuneResult:
    weights: Path
    checkpoint: Path
    train: TrainResult
    test: Evaluation
    classes: list[str]
    arch: Arch


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fine-tuned timm model from its safetensors file, with its metadata."""
    from pipeline.models.supernet import SearchSpace

    state, meta = load_weights(path)
    space = SearchSpace.from_params(meta["space"], num_classes=len(meta["classes"]))
    model = build_vit(Arch(**meta["arch"]), space)
    model.load_state_dict(state)
    return model.eval(), meta


def finetune(data_dir: Path, out_dir: Path, params: dict[str, Any], supernet_weights: Path, arch: Arch, *,
             resume: bool = False, meta: dict[str, Any] | None = None,
             overrides: dict[str, Any] | None = None) -> FinetuneResult:
    p = params["finetune"]
    cfg = TrainConfig.from_params(p, params["seed"], overrides)
    seed_everything(cfg.seed, cfg.threads)
    net, sn_meta = load_supernet(supernet_weights)
    manifest = load_manifest(data_dir)
    if sn_meta["classes"] != manifest.classes:
        raise ValueError(f"{supernet_weights}: trained on classes {sn_meta['classes']}, dataset has {manifest.classes}")
    model = extract_subnet(net, arch).train()
    mean, std = params["model"]["mean"], params["model"]["std"]
    images, y = load_split(data_dir, "train", arch.img_size)
    x = normalize(images, mean, std)

    def step_loss(m: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        return F.cross_entropy(m(random_shift(x[idx], p["max_shift"])), y[idx], label_smoothing=p["label_smoothing"])

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    config = {"arch": arch.to_dict(), "space": sn_meta["space"], "classes": manifest.classes,
              "mean": mean, "std": std, **(meta or {})}
    result = train(model, step_loss, len(x), cfg, checkpoint=ckpt, resume=resume, config=config, desc="finetune")

    test_images, y_test = load_split(data_dir, "test", arch.img_size)
    logits = predict(model, normalize(test_images, mean, std))
    test = evaluation_from_predictions(logits.argmax(-1).numpy(), y_test.numpy(), len(manifest.classes))
    log.info("fine-tuned %s: test top-1 %.4f on %d images", arch.short(), test.top1, test.n)
    weights = save_weights(out_dir / "model.safetensors", model.state_dict(), {**config, "kind": "timm-vit"})
    return FinetuneResult(weights, ckpt, result, test, manifest.classes, arch)
