"""MAE pre-training on every image of a dataset version: every split and the unlabeled images, labels unused.

The command-line wrapper (also for torchrun) is ``pipeline/cli_pretrain.py``. With ``pretrain.nproc`` above 1,
``pretrain`` starts itself under torchrun (``pipeline/cli_train.py``) and returns rank 0's result.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from pipeline.data.tensors import load_images, normalize
from pipeline.launch import launch, needs_launch, processes
from pipeline.models.supernet import SearchSpace
from pipeline.paths import BACKBONE
from pipeline.ssl.mae import MAE, MAEConfig
from pipeline.training import (
    CheckpointError,
    TrainConfig,
    TrainResult,
    device,
    is_main,
    load_checkpoint,
    seed_everything,
    train,
)
from pipeline.weights import load_weights, save_weights

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "PretrainResult", "init_from_checkpoint", "pretrain"]


@dataclass
class PretrainResult:
    weights: Path  # encoder (timm names) as safetensors
    checkpoint: Path
    train: TrainResult
    model: MAE
    images: torch.Tensor  # normalized, for the reconstruction plot


HF_HUB_PREFIX = "hf-hub:"


def init_from_checkpoint(mae: MAE, source: str | Path) -> None:
    """Start the MAE encoder from a timm ViT checkpoint; every encoder tensor must come from it.

    ``source``: a local file (``.safetensors``, or a torch ``.pth``/``.pt`` holding a state dict,
    possibly wrapped as ``{"model": ...}`` or ``{"state_dict": ...}``), or ``hf-hub:NAME``, loaded
    by timm (``timm.create_model("hf-hub:NAME", pretrained=True)``, which uses the local Hugging Face
    cache when the hub cannot be reached).

    The encoder is the largest arch of params.yaml ``space``, so the space must be set so that
    its largest arch *is* the checkpoint's: ``max(depths)`` = its depth, ``max(embed_dims)`` = its
    width, ``max(mlp_ratios)`` = its MLP ratio, ``patch_size`` = its patch size, and ``head_dim`` =
    its width / its number of heads (the heads are not visible in a state dict: for a local file
    this one cannot be checked). The load is strict: a missing tensor, an unexpected one or one of
    another shape is a ``CheckpointError`` naming them and the checkpoint's depth and width. Two
    exceptions: a classifier (``head.*``) is dropped, as the encoder has no head (``num_classes=0``);
    and position embeddings for another token grid (pre-trained at another image size) are resampled
    to the encoder's grid with ``timm.layers.resample_abs_pos_embed`` (bicubic, class token kept),
    as timm does when it loads a checkpoint at a new image size.
    """
    name = str(source)
    if name.startswith(HF_HUB_PREFIX):
        state, heads = _read_hf_hub(name)
    else:
        state, heads = _read_file(Path(source)), None
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    # The encoder is built with num_classes=0 (no head): a checkpoint's classifier is not part of it.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}

    ckpt = _facts(state, heads)  # before any resampling: what the checkpoint is
    enc = mae.encoder
    own = enc.state_dict()
    grid = mae.grid
    pos = state.get("pos_embed")
    if (isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[-1] == own["pos_embed"].shape[-1]
            and pos.shape[1] != own["pos_embed"].shape[1] and _is_square(pos.shape[1] - 1)):
        old = math.isqrt(pos.shape[1] - 1)
        state["pos_embed"] = resample_abs_pos_embed(pos.float(), [grid, grid], [old, old], num_prefix_tokens=1)
        log.info("%s: position embeddings resampled from a %dx%d to a %dx%d grid", name, old, old, grid, grid)

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    enc_heads = enc.blocks[0].attn.num_heads if len(enc.blocks) else None
    if missing or unexpected or wrong or (heads is not None and heads != enc_heads):
        problems = [f"{label}: {_some(keys)}" for label, keys in
                    [("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs encoder)", wrong)]
                    if keys]
        if heads is not None and heads != enc_heads:
            problems.append(f"num_heads {heads} vs {enc_heads}")
        enc_facts = _facts(own, enc_heads)
        raise CheckpointError(
            f"{name}: does not fit the MAE encoder, the largest arch of params.yaml space ({_show(enc_facts)}); "
            f"the checkpoint is {_show(ckpt) or 'not a timm ViT state dict'}: {_fix(ckpt, enc_facts)}; "
            + "; ".join(problems))
    enc.load_state_dict(state, strict=True)
    log.info("initialised all %d encoder tensors from %s", len(own), name)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: init_checkpoint does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_weights(path)[0]
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and unpickling raise many types; all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_first_line(err)})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (nor one under 'model' or 'state_dict')")
    return obj


def _read_hf_hub(name: str) -> tuple[dict[str, torch.Tensor], int]:
    """A timm model from the Hugging Face Hub (or the local HF cache): its state dict and number of heads."""
    import timm
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from timm.models.vision_transformer import VisionTransformer

    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{name}: no such model on the Hugging Face Hub (or it is private or gated)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as err:
        raise CheckpointError(f"{name}: the Hugging Face Hub cannot be reached (offline or no network) and the "
                              f"model is not in the local cache ({type(err).__name__}); download it where there "
                              "is network, or use a local checkpoint file") from None
    except EntryNotFoundError:
        raise CheckpointError(f"{name}: not a timm model on the Hugging Face Hub (no config.json or weights)"
                              ) from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"{name}: Hugging Face Hub error ({_first_line(err)})") from None
    except RuntimeError as err:  # e.g. timm's "Unknown model" for an architecture it does not know
        raise CheckpointError(f"{name}: timm cannot build it ({_first_line(err)})") from None
    except Exception as err:
        # A transport error the hub client did not wrap (its HTTP stack: httpx2/httpx/httpcore, or requests).
        if type(err).__module__.split(".")[0] in {"httpx2", "httpx", "httpcore", "requests", "urllib3"}:
            raise CheckpointError(f"{name}: the Hugging Face Hub cannot be reached ({type(err).__name__}: "
                                  f"{_first_line(err)})") from None
        raise
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"{name}: a timm {type(model).__name__}, not a VisionTransformer")
    return model.state_dict(), model.blocks[0].attn.num_heads if len(model.blocks) else 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _some(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _facts(state: dict[str, torch.Tensor], heads: int | None) -> dict[str, int | float]:
    """depth, width, MLP ratio, patch and image size of a timm ViT state dict, as far as it shows them."""
    out: dict[str, int | float] = {}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        out["depth"] = max(blocks) + 1
    w = state.get("patch_embed.proj.weight")
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        out["embed_dim"] = w.shape[0]
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        if isinstance(fc1, torch.Tensor) and fc1.dim() == 2:
            out["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
        out["patch_size"] = w.shape[-1]
        pos = state.get("pos_embed")
        if isinstance(pos, torch.Tensor) and pos.dim() == 3 and _is_square(pos.shape[1] - 1):
            out["img_size"] = math.isqrt(pos.shape[1] - 1) * w.shape[-1]
        if heads:
            out["num_heads"] = heads
            out["head_dim"] = w.shape[0] // heads
    return out


def _show(facts: dict[str, int | float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in facts.items())


# The params.yaml space field that sets each fact of the largest arch (img_size is resampled, not set).
_SPACE_FIELD = {"depth": "max(depths)", "embed_dim": "max(embed_dims)", "mlp_ratio": "max(mlp_ratios)",
                "patch_size": "patch_size", "head_dim": "head_dim"}


def _fix(ckpt: dict[str, int | float], enc: dict[str, int | float]) -> str:
    """What to change in params.yaml space, for the facts that differ."""
    todo = [f"{field} = {ckpt[k]:g}" for k, field in _SPACE_FIELD.items() if k in ckpt and ckpt[k] != enc.get(k)]
    return ("set params.yaml space so that " + ", ".join(todo)) if todo else \
        "set params.yaml space so its largest arch equals the checkpoint's"


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
    if needs_launch(params, "pretrain"):
        return _pretrain_under_torchrun(data_dir, out_dir, params, cfg, resume=resume, meta=meta, overrides=overrides)
    seed_everything(cfg.seed, cfg.threads)
    space, mae_cfg = _space_and_mae(params)
    x = _inputs(data_dir, params, space)

    model = MAE(space, mae_cfg)
    if p.get("init_checkpoint"):
        init_from_checkpoint(model, p["init_checkpoint"])
    dev = device()
    model.to(dev)

    def step_loss(net: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        loss, _, _ = net(x[idx].to(dev))
        return loss

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    config = {"mae": mae_cfg.to_dict(), "space": params["space"], "arch": space.largest().to_dict(), **(meta or {})}
    result = train(model, step_loss, len(x), cfg, checkpoint=ckpt, resume=resume, config=config, desc="pretrain")
    model.cpu()  # the result's model and images are on the CPU (the stage plots reconstructions with them)
    weights = out_dir / BACKBONE
    if is_main():
        save_weights(weights, model.encoder.state_dict(), {**config, "kind": "mae-encoder"})
    return PretrainResult(weights, ckpt, result, model, x)


def _space_and_mae(params: dict[str, Any]) -> tuple[SearchSpace, MAEConfig]:
    p = params["pretrain"]
    mae_cfg = MAEConfig(p["mask_ratio"], p["decoder_dim"], p["decoder_depth"], p["decoder_heads"], p["norm_pix_loss"])
    return SearchSpace.from_params(params["space"]), mae_cfg


def _inputs(data_dir: Path, params: dict[str, Any], space: SearchSpace) -> torch.Tensor:
    """Every split and the unlabeled images, normalized."""
    images = load_images(data_dir, space.largest().img_size)
    return normalize(images, params["model"]["mean"], params["model"]["std"])


def _pretrain_under_torchrun(data_dir: Path, out_dir: Path, params: dict[str, Any], cfg: TrainConfig, *,
                             resume: bool, meta: dict[str, Any] | None,
                             overrides: dict[str, Any] | None) -> PretrainResult:
    """``pretrain`` on ``pretrain.nproc`` processes; the MAE comes back from rank 0's final checkpoint."""
    request = {"data_dir": str(data_dir), "out_dir": str(out_dir), "params": params, "resume": resume,
               "meta": meta, "overrides": overrides}
    reply = launch("pretrain", request, processes(params, "pretrain"), out_dir, cfg.threads)
    space, mae_cfg = _space_and_mae(params)
    model = MAE(space, mae_cfg)
    ckpt = out_dir / "checkpoint.pt"
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    return PretrainResult(Path(reply["weights"]), ckpt, TrainResult.from_summary(reply["train"]), model.train(),
                          _inputs(data_dir, params, space))
