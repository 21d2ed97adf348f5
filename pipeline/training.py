"""The training loop every stage shares: MAE pre-training, supernet training, fine-tuning.

AdamW with a linear warm-up and a cosine schedule, gradient clipping, a progress
bar with images/s and loss, a clear error on a non-finite loss, and checkpoints
every N steps that carry their config and resume bit for bit: the data order is a
function of (seed, epoch) and the RNG state is saved with the weights.

Runs under ``torchrun`` too: each rank takes its share of every batch, gradients
are averaged by DDP (gloo on CPU), and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    checkpoint_every: int
    seed: int
    threads: int
    max_steps: int | None = None  # stop early (tests, benchmarks)

    @classmethod
    def from_params(cls, p: dict[str, Any], seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A stage's section of params.yaml plus the global seed; ``overrides`` win (None values ignored)."""
        keys = cls.__dataclass_fields__
        values = {k: p[k] for k in keys if k in p} | {"seed": seed}
        return cls(**values | {k: v for k, v in (overrides or {}).items() if v is not None})


def seed_everything(seed: int, threads: int) -> None:
    """Same commit + data + params + seed -> same weights (on CPU)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(n: int, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The sample indices of ``step``: a permutation per epoch, seeded by (seed, epoch)."""
    per_epoch = max(1, n // cfg.batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
    return idx[rank::world]


def total_steps(n: int, cfg: TrainConfig) -> int:
    steps = cfg.epochs * max(1, n // cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int,
                    config: dict[str, Any], history: list[float]) -> None:
    """Atomic (write, then rename): a kill mid-write leaves the previous checkpoint whole."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state(), "config": config, "history": history}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainResult:
    steps: int
    history: list[float]  # loss per step
    images_per_s: float
    seconds: float


def train(
    model: nn.Module,
    step_loss: Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
    n_samples: int,
    cfg: TrainConfig,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    config: dict[str, Any] | None = None,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run the loop. ``step_loss(model, indices, step)`` computes the loss of one batch.

    ``config`` (plain JSON types) is stored in every checkpoint, so a checkpoint
    says what it is.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "pos_embed" not in n
             and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    start, history = 0, []
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = state["step"], list(state["history"])
        log.info("resumed %s from step %d", checkpoint, start)
    total = total_steps(n_samples, cfg)
    ckpt_config = {"train": asdict(cfg), **(config or {})}

    model.train()
    t0 = time.perf_counter()
    seen = 0
    bar = tqdm(range(start, total), desc=desc, unit="step", disable=rank != 0, leave=False, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        idx = batch_indices(n_samples, step, cfg, rank, world)
        loss = step_loss(net, idx, step)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{desc}: loss is {loss.item()} at step {step}; lower the learning rate "
                                     f"(now {opt.param_groups[0]['lr']:.2e}) or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        history.append(float(loss.item()))
        seen += len(idx) * world
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{history[-1]:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
        if on_step is not None and rank == 0:
            on_step(step, history[-1])
        done = step + 1
        if checkpoint is not None and rank == 0 and (done % cfg.checkpoint_every == 0 or done == total):
            save_checkpoint(checkpoint, model, opt, done, ckpt_config, history)
    elapsed = time.perf_counter() - t0
    return TrainResult(len(history), history, seen / max(elapsed, 1e-9), elapsed)
