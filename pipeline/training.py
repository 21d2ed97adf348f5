"""The training loop every stage shares: MAE pre-training, supernet training, fine-tuning.

AdamW with a linear warm-up and a cosine schedule, gradient clipping, a progress
bar with images/s and loss, a clear error on a non-finite loss, and checkpoints
every N steps that carry their config and resume bit for bit: the data order is a
function of (seed, epoch) and the RNG state is saved with the weights.

A run is as long as its epochs say, or, with ``time_budget_s``, as many steps as
fit the budget: the step count is fitted to the pace of the steps so far (never
below ``min_steps``) and re-fitted every few steps, so the learning-rate schedule
still ends at the run's last step. The step count a run took is recorded; replaying it
(``max_steps``) needs no clock. Optional: layer-wise learning-rate decay (timm's
``param_groups_layer_decay``, for timm ViTs) and an EMA of the weights (timm's
``ModelEmaV3``), both saved in the checkpoint.

Runs under ``torchrun`` too: each rank takes its share of every batch, gradients
are averaged by DDP (NCCL on CUDA, gloo on CPU), the loss recorded is the global
batch's, and only rank 0 logs and writes checkpoints. ``pipeline/launch.py`` starts
a stage's training that way (``nproc`` in its params.yaml section).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipeline.errors import InputError, ParamsError

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointError(InputError, ValueError):
    """A checkpoint or weights file that cannot be used (missing, unreadable, or not fitting the model it is
    loaded into). ``str(err)`` is one line naming the file."""


class ResumeError(CheckpointError):
    """``--resume`` against a checkpoint of another run (config, arch, space, dataset version), or one with no
    step left to train. ``str(err)`` is one line naming the checkpoint and the fields that differ."""


# Checkpoint config fields a resumed run may change: provenance of the run itself, and the time budget (a
# resumed run keeps the step count the checkpoint fixed).
RESUME_MAY_DIFFER = frozenset({"git_sha", "dagster_run_id", "train.time_budget_s"})


def config_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """``field: <checkpoint> in the checkpoint, <now> now`` for each leaf that differs (dotted names)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}{key}"
            if name in RESUME_MAY_DIFFER:
                continue
            if key not in stored or key not in current:
                where = "now only" if key not in stored else "the checkpoint only"
                out.append(f"{name} in {where}")
                continue
            out += config_differences(stored[key], current[key], f"{name}.")
        return out
    if isinstance(stored, (list, tuple)) and isinstance(current, (list, tuple)):
        stored, current = list(stored), list(current)
    if stored != current:
        return [f"{prefix.rstrip('.')}: {stored!r} in the checkpoint, {current!r} now"]
    return []


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
    max_steps: int | None = None  # an exact step count (tests, benchmarks, replays); wins over epochs and time
    time_budget_s: float | None = None  # steps are fitted to this wall-clock budget instead of the epochs
    min_steps: int = 1  # a time budget never gives fewer steps than this
    # [[step, total], ...]: the totals a time-budgeted run fitted, each from its step on (pipeline/replay.py);
    # given, the run replays them instead of timing itself: the same steps and learning rates, bit for bit
    schedule: list[list[int]] | None = None
    layer_decay: float | None = None  # lr scale per ViT layer from the head down (timm); None: one lr
    ema_decay: float | None = None  # keep an EMA of the weights (timm ModelEmaV3, with warm-up); None: off

    @classmethod
    def from_params(cls, p: dict[str, Any], seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A stage's section of params.yaml plus the global seed; ``overrides`` win (None values ignored)."""
        keys = cls.__dataclass_fields__
        values = {k: p[k] for k in keys if k in p} | {"seed": seed}
        return cls(**values | {k: v for k, v in (overrides or {}).items() if v is not None})


def device() -> torch.device:
    """Where training runs, chosen here once for every stage: this process's GPU (``LOCAL_RANK`` under
    torchrun) where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> bool:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU.
    True when this process is one of several."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    return True


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes weights and results."""
    return not dist.is_initialized() or dist.get_rank() == 0


def seed_everything(seed: int, threads: int) -> None:
    """Same commit + data + params + seed -> same weights (on CPU; on CUDA as far as its kernels allow: an
    op without a deterministic CUDA kernel warns instead of stopping the run)."""
    cuda = device().type == "cuda"
    if cuda:  # cuBLAS is deterministic only with a fixed workspace; read when it is first used
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)  # seeds every CUDA device too
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=cuda)


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
    """Steps from the epochs (or ``max_steps``); a time budget refines it once steps have been timed."""
    if cfg.max_steps:
        return cfg.max_steps
    return cfg.epochs * max(1, n // cfg.batch_size)


PROBE_STEPS = 4  # under a time budget the step count is (re-)fitted every this many steps, after the first


def steps_for_budget(budget_s: float, spent_s: float, done: int, per_step_s: float, min_steps: int) -> int:
    """The total step count that spends ``budget_s`` given ``done`` steps took ``spent_s``."""
    return max(min_steps, done + int(max(0.0, budget_s - spent_s) / max(per_step_s, 1e-9)))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no decay on norms, biases, tokens and position embeddings; layer-wise lr if asked."""
    if cfg.layer_decay:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                        layer_decay=cfg.layer_decay)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "pos_embed" not in n
             and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(p is q for q in decay)]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int,
                    config: dict[str, Any], history: list[float], total: int | None,
                    ema: nn.Module | None = None) -> None:
    """Atomic (write, then rename): a kill mid-write leaves the previous checkpoint whole."""
    tmp = path.with_suffix(".tmp")
    dev = next(model.parameters()).device
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "total": total,
                "rng": torch.get_rng_state(), "config": config, "history": history,
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "ema": ema.state_dict() if ema is not None else None}, tmp)
    os.replace(tmp, path)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint does not exist") from None
    except Exception as err:  # unpickling and zip reading raise many types; all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first_line(err)})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "config", "history"} <= set(state):
        raise CheckpointError(f"{path}: not a training checkpoint (no model, optimizer, step, config and history)")
    return state


@dataclass
class TrainResult:
    steps: int
    history: list[float]  # loss per step
    images_per_s: float
    seconds: float
    ema: nn.Module | None = None  # the EMA of the weights (a copy of the model), when ``ema_decay`` is set
    totals: list[list[int]] = field(default_factory=list)  # [[step, total], ...]: the total in force from each step

    def summary(self) -> dict[str, Any]:
        """What a torchrun worker sends back (the EMA ships in the weights file instead)."""
        return {"steps": self.steps, "history": self.history, "images_per_s": self.images_per_s,
                "seconds": self.seconds, "totals": self.totals}

    @classmethod
    def from_summary(cls, d: dict[str, Any]) -> TrainResult:
        return cls(int(d["steps"]), [float(v) for v in d["history"]], float(d["images_per_s"]), float(d["seconds"]),
                   totals=[list(t) for t in d.get("totals", [])])


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
    says what it is. ``resume`` continues from ``checkpoint`` only if it was written by the same run: its
    stored config (train settings, arch, space, dataset version, ...; not ``RESUME_MAY_DIFFER``) must equal
    this one, else ``ResumeError`` names each field that differs. A run with no step left to train (a
    finished checkpoint, or 0 epochs) raises instead of returning: it never reports success.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cfg.batch_size % world:
        raise ParamsError(f"params.yaml: {desc}: batch_size {cfg.batch_size} does not split evenly over {world} "
                          "processes (nproc); the ranks' shares must be equal for DDP's average to be the batch's")
    dev = next(model.parameters()).device  # the caller put it on ``device()``; ``step_loss`` moves batches there
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    total = total_steps(n_samples, cfg)
    replayed = {int(at): int(n) for at, n in cfg.schedule} if cfg.schedule else None
    fitted = cfg.max_steps is not None or cfg.time_budget_s is None or replayed is not None  # known up front
    start, history = 0, []
    ckpt_config = {"train": asdict(cfg), **(config or {})}
    resumed = False
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        differ = config_differences(state["config"], ckpt_config)
        if differ:
            raise ResumeError(f"{checkpoint}: cannot resume, the checkpoint is of another run: " + "; ".join(differ)
                              + " (run without --resume to start over)")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{checkpoint}: does not fit the model ({first_line(err)})") from None
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start, history = state["step"], list(state["history"])
        if not fitted and state.get("total") is not None:  # a time-budgeted run keeps the count it had fitted
            total, fitted = state["total"], True
        log.info("resumed %s from step %d of %d", checkpoint, start, total)
        resumed = True
    elif resume:
        log.warning("%s: no checkpoint to resume from; training from the start", checkpoint)
    if fitted and start >= total:
        if resumed:
            raise ResumeError(f"{checkpoint}: already at step {start} of {total}, nothing left to resume "
                              "(run without --resume to train again)")
        raise ParamsError(f"params.yaml: {desc}: 0 steps to train (epochs {cfg.epochs}, max_steps "
                          f"{cfg.max_steps}); set epochs or max_steps above 0")
    if not fitted and cfg.time_budget_s <= 0:  # nothing left to fit: the minimum, without probing
        total, fitted = start + cfg.min_steps, True
    if not fitted:  # provisional, until the probe steps are timed
        total = max(total, cfg.min_steps, start + 1 + PROBE_STEPS)
    if replayed is not None:  # the recorded totals, from the one in force at ``start``
        total = replayed[max(at for at in replayed if at <= start)]
    totals = [[start, total]]

    model.train()
    t0 = time.perf_counter()
    seen = 0
    # A bar on a terminal; elsewhere (Dagster run logs, CI, files) a log line every 10 s instead of
    # carriage-return floods.
    interactive = rank == 0 and sys.stderr.isatty()
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not interactive, leave=False,
               mininterval=1.0)
    last_log = time.perf_counter()
    step, t_probe = start, 0.0
    timed = not fitted
    while step < total:
        if timed and step == start + 1:
            t_probe = time.perf_counter()  # the first step pays for warm-up allocations: time the ones after
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg) * group.get("lr_scale", 1.0)
        idx = batch_indices(n_samples, step, cfg, rank, world)
        loss = step_loss(net, idx, step)
        batch_loss = loss.detach()
        if world > 1:  # the global batch's loss (the mean of the ranks' equal shares); every rank stops together
            batch_loss = batch_loss.clone()
            dist.all_reduce(batch_loss)
            batch_loss /= world
        if not torch.isfinite(batch_loss):
            raise NonFiniteLossError(f"{desc}: loss is {batch_loss.item()} at step {step}; lower the learning rate "
                                     f"(now {opt.param_groups[0]['lr']:.2e}) or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model, step=step)
        history.append(float(batch_loss.item()))
        seen += len(idx) * world
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
        if on_step is not None and rank == 0:
            on_step(step, history[-1])
        if rank == 0 and not interactive and time.perf_counter() - last_log >= 10.0:
            last_log = time.perf_counter()
            log.info("%s: step %d/%d, loss %.4f, %.0f images/s", desc, step + 1, total, history[-1],
                     seen / max(elapsed, 1e-9))
        step += 1
        if timed and step >= start + 1 + PROBE_STEPS and (step - start - 1) % PROBE_STEPS == 0:
            # re-fitted every few steps from the pace so far, so a machine that slows down mid-run
            # (another job on the cores) shortens the run instead of overrunning the budget
            per_step = (time.perf_counter() - t_probe) / (step - start - 1)
            total = steps_for_budget(cfg.time_budget_s, time.perf_counter() - t0, step - start, per_step,
                                     cfg.min_steps) + start
            if world > 1:  # every rank must run the same number of steps: rank 0 decides
                t = torch.tensor([total], device=dev)
                dist.broadcast(t, 0)
                total = int(t)
            bar.total = total
            if total != totals[-1][1]:
                totals.append([step, total])
        elif replayed is not None and step in replayed and replayed[step] != total:
            total = replayed[step]
            totals.append([step, total])
            bar.total = total
        if checkpoint is not None and rank == 0 and (step % cfg.checkpoint_every == 0 or step == total):
            known = not timed or step >= start + 1 + PROBE_STEPS  # not the provisional count before the first fit
            save_checkpoint(checkpoint, model, opt, step, ckpt_config, history, total if known else None, ema)
    bar.close()
    if step <= start:  # unreachable after the checks above; a run that trained nothing must never pass as done
        raise RuntimeError(f"{desc}: trained 0 steps (start {start}, total {total})")
    elapsed = time.perf_counter() - t0
    if timed:
        log.info("%s: %d steps in %.0f s (budget %.0f s)", desc, step - start, elapsed, cfg.time_budget_s)
    return TrainResult(len(history), history, seen / max(elapsed, 1e-9), elapsed,
                       ema.module if ema is not None else None, totals)
