"""MAE pre-training on every image of a dataset version (labels unused).

The command-line wrapper (also for torchrun) is ``pipeline/cli_pretrain.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.data.tensors import load_split, normalize
from pipeline.models.supernet import SearchSpace
from pipeline.ssl.mae import MAE, MAEConfig
from pipeline.training import TrainConfig, TrainResult, seed_everything, train
from pipeline.weights import load_weights, save_weights

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    weights: Path  # encoder (timm names) as safetensors
    checkpoint: Path
    train: TrainResult
    model: MAE
    images: torch.Tensor  # normalized, for the reconstruction plot


def init_from_checkpoint(mae: MAE, path: Path) -> None:
    """Start from a local timm-compatible ViT checkpoint (e.g. a user's DINOv2 or MAE ViT)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: init_checkpoint does not exist")
    if path.suffix == ".safetensors":
        state, _ = load_weights(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    own = mae.encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the encoder's names and shapes (largest arch of the space)")
    mae.encoder.load_state_dict(usable, strict=False)
    log.info("initialised %d/%d encoder tensors from %s", len(usable), len(own), path)


def pretrain(
    data_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
    *,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PretrainResult:
    p = params["pretrain"]
    cfg = TrainConfig.from_params(p, params["seed"], overrides)
    seed_everything(cfg.seed, cfg.threads)
    space = SearchSpace.from_params(params["space"])
    mae_cfg = MAEConfig(p["mask_ratio"], p["decoder_dim"], p["decoder_depth"], p["decoder_heads"], p["norm_pix_loss"])
    images, _ = load_split(data_dir, None, space.largest().img_size)  # every image; labels unused
    x = normalize(images, params["model"]["mean"], params["model"]["std"])

    model = MAE(space, mae_cfg)
    if p.get("init_checkpoint"):
        init_from_checkpoint(model, Path(p["init_checkpoint"]))

    def step_loss(net: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        loss, _, _ = net(x[idx])
        return loss

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    config = {"mae": mae_cfg.to_dict(), "space": params["space"], "arch": space.largest().to_dict(), **(meta or {})}
    result = train(model, step_loss, len(x), cfg, checkpoint=ckpt, resume=resume, config=config, desc="pretrain")
    weights = out_dir / "backbone.safetensors"
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_weights(weights, model.encoder.state_dict(), {**config, "kind": "mae-encoder"})
    return PretrainResult(weights, ckpt, result, model, x)
