"""A weight-sharing ViT supernet whose every subnet is a plain timm VisionTransformer.

References:
- AutoFormer (Chen et al., 2021): weight entanglement, a subnet takes the first
  blocks, channels and heads of the largest network.
- BigNAS / OFA: sandwich-rule training of the largest, smallest and random subnets.

Design: the supernet *is* a timm ``VisionTransformer`` of the largest arch (so
its state dict has timm's names and MAE weights load into it as they are).
Weight sharing is defined once, in ``slice_state_dict(weights, arch)``: the first
``depth`` blocks, the first ``embed_dim`` channels, the first ``mlp_ratio * embed_dim``
hidden units, and the position embeddings resampled to the arch's token grid.
Heads have one fixed size for the whole space (``head_dim``, as in AutoFormer and
HAT), so an arch of width ``d`` has ``d / head_dim`` heads and its first ``d``
channels of q, k and v are exactly its first whole heads: a subnet computes the
same attention pattern the shared weights were trained for. ``forward(x, arch)`` runs a timm model of the
arch's shape on those slices (views, so gradients reach the shared weights) and
``extract_subnet`` copies the same slices into a standalone timm model. Per-layer
elastic widths are out on purpose: they would not be a plain timm model.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.func import functional_call

from pipeline.errors import ParamsError
from pipeline.models.stem import ConvStem, stem_cost, stem_widths

# ---- the search space -----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Arch:
    """One subnet. Patch size and head dim are fixed per run and live in the ``SearchSpace``."""

    depth: int
    embed_dim: int
    mlp_ratio: float
    img_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        return f"d{self.depth}-e{self.embed_dim}-m{self.mlp_ratio:g}-i{self.img_size}"


@dataclass(frozen=True)
class SearchSpace:
    """Every bound comes from params.yaml (``space:``); none lives in code."""

    patch_size: int
    img_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    head_dim: int
    mlp_ratios: tuple[float, ...]
    stem: str  # "patch": ViT's patchify convolution; "conv": a convolutional stem (pipeline.models.stem)
    stem_width: int  # channels of the conv stem's first convolution (doubling after each)
    in_chans: int = 3
    num_classes: int = field(default=0)  # set from the dataset

    @classmethod
    def from_params(cls, p: dict[str, Any], num_classes: int = 0) -> SearchSpace:
        for key in ("patch_size", "img_sizes"):
            if p.get(key) == "auto":
                raise ParamsError(f"params.yaml space.{key} is 'auto': it is fitted by the pretrain stage "
                                 "(pipeline/nas/space_fit.py) and read from its weights by later stages")
        space = cls(
            patch_size=int(p["patch_size"]),
            img_sizes=tuple(sorted(int(v) for v in p["img_sizes"])),
            depths=tuple(sorted(int(v) for v in p["depths"])),
            embed_dims=tuple(sorted(int(v) for v in p["embed_dims"])),
            head_dim=int(p["head_dim"]),
            mlp_ratios=tuple(sorted(float(v) for v in p["mlp_ratios"])),
            stem=str(p["stem"]),
            stem_width=int(p["stem_width"]),
            num_classes=num_classes,
        )
        if space.stem not in ("patch", "conv"):
            raise ParamsError(f"params.yaml space.stem: expected 'patch' or 'conv', got {space.stem!r}")
        if space.stem == "conv":
            stem_widths(space.patch_size, space.stem_width)  # checks the patch size suits a conv stem
        for size in space.img_sizes:
            if size % space.patch_size:
                raise ParamsError(f"params.yaml space.img_sizes: {size} is not a multiple of patch_size "
                                 f"{space.patch_size}")
        for dim in space.embed_dims:
            if dim % space.head_dim:
                raise ParamsError(f"params.yaml space.embed_dims: {dim} is not a multiple of head_dim "
                                 f"{space.head_dim} (a subnet takes whole heads)")
        return space

    def num_heads(self, arch: Arch) -> int:
        return arch.embed_dim // self.head_dim

    def valid(self, arch: Arch) -> bool:
        return (arch.depth in self.depths and arch.embed_dim in self.embed_dims and arch.mlp_ratio in self.mlp_ratios
                and arch.img_size in self.img_sizes)

    def largest(self) -> Arch:
        return Arch(self.depths[-1], self.embed_dims[-1], self.mlp_ratios[-1], self.img_sizes[-1])

    def smallest(self) -> Arch:
        return Arch(self.depths[0], self.embed_dims[0], self.mlp_ratios[0], self.img_sizes[0])

    def sample(self, rng: random.Random) -> Arch:
        return Arch(rng.choice(self.depths), rng.choice(self.embed_dims), rng.choice(self.mlp_ratios),
                    rng.choice(self.img_sizes))

    def all_archs(self) -> list[Arch]:
        return [Arch(d, e, m, i) for d in self.depths for e in self.embed_dims for m in self.mlp_ratios
                for i in self.img_sizes]


# ---- cost of an arch, computed ------------------------------------------------------------------


def num_tokens(arch: Arch, patch_size: int) -> int:
    return (arch.img_size // patch_size) ** 2 + 1  # patches + class token


def _embed_cost(arch: Arch, space: SearchSpace) -> tuple[int, int]:
    """(FLOPs, parameters) of the patch embedding: patchify conv, or conv stem + 1x1 projection."""
    d, p, c = arch.embed_dim, space.patch_size, space.in_chans
    patches = num_tokens(arch, p) - 1
    if space.stem == "patch":
        return 2 * patches * c * p * p * d, c * p * p * d + d
    flops, params = stem_cost(arch.img_size, p, c, space.stem_width)
    c_last = stem_widths(p, space.stem_width)[-1]
    return flops + 2 * patches * c_last * d, params + c_last * d + d


def arch_params(arch: Arch, space: SearchSpace) -> int:
    """Parameter count of the timm model ``build_vit(arch, space)``."""
    d, p = arch.embed_dim, space.patch_size
    hidden = int(d * arch.mlp_ratio)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    embed = _embed_cost(arch, space)[1] + d + num_tokens(arch, p) * d  # patch embedding, cls token, pos embed
    head = 2 * d + (d * space.num_classes + space.num_classes if space.num_classes else 0)
    return embed + arch.depth * block + head


def arch_flops(arch: Arch, space: SearchSpace) -> int:
    """Forward FLOPs for one image (2 per multiply-add), counting the matmuls, convolutions and attention."""
    d, p = arch.embed_dim, space.patch_size
    n = num_tokens(arch, p)
    hidden = int(d * arch.mlp_ratio)
    embed = _embed_cost(arch, space)[0]
    block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
    head = 2 * d * space.num_classes
    return embed + arch.depth * block + head


# ---- building and slicing -----------------------------------------------------------------------


def build_vit(arch: Arch, space: SearchSpace, **kwargs: Any) -> VisionTransformer:
    """The timm model of ``arch``: what a subnet is, and what ships (with a conv stem as its embed layer)."""
    if space.stem == "conv":
        kwargs["embed_layer"] = partial(ConvStem, stem_width=space.stem_width)
    return VisionTransformer(
        img_size=arch.img_size, patch_size=space.patch_size, in_chans=space.in_chans,
        num_classes=space.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=space.num_heads(arch), mlp_ratio=arch.mlp_ratio, qkv_bias=True, **kwargs,
    )


def slice_state_dict(weights: dict[str, torch.Tensor], arch: Arch, space: SearchSpace) -> dict[str, torch.Tensor]:
    """The weights of ``arch`` taken from the largest network's ``weights`` (the one rule of sharing)."""
    d = arch.embed_dim
    dmax = weights["cls_token"].shape[-1]
    hidden = int(d * arch.mlp_ratio)
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        parts = name.split(".")
        if name.startswith("patch_embed.stem."):
            pass  # the conv stem (weights and BatchNorm statistics) is every subnet's
        elif parts[0] == "blocks":
            if int(parts[1]) >= arch.depth:
                continue
            leaf = ".".join(parts[2:])
            if leaf == "attn.qkv.weight":  # (3*Dmax, Dmax): q, k and v each keep their first d rows
                w = w.view(3, dmax, dmax)[:, :d, :d].reshape(3 * d, d)
            elif leaf == "attn.qkv.bias":
                w = w.view(3, dmax)[:, :d].reshape(3 * d)
            elif leaf == "mlp.fc1.weight":
                w = w[:hidden, :d]
            elif leaf == "mlp.fc1.bias":
                w = w[:hidden]
            elif leaf == "mlp.fc2.weight":
                w = w[:d, :hidden]
            elif w.dim() == 2:  # attn.proj.weight
                w = w[:d, :d]
            else:  # norms and biases of width D
                w = w[:d]
        elif name == "patch_embed.proj.weight":
            w = w[:d]  # (D, C, p, p), or (D, C_stem, 1, 1) after a conv stem
        elif name in ("cls_token",):
            w = w[..., :d]
        elif name == "pos_embed":
            grid = arch.img_size // space.patch_size
            w = resample_abs_pos_embed(w[..., :d], [grid, grid], num_prefix_tokens=1)
        elif name == "head.weight":
            w = w[:, :d]
        elif name in ("head.bias",):
            pass
        else:  # patch_embed.proj.bias, norm.weight, norm.bias, fc_norm.*
            w = w[:d]
        out[name] = w
    return out


class Supernet(nn.Module):
    """The largest timm ViT of the space, run at any arch by slicing its weights."""

    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.0):
        super().__init__()
        self.space = space
        self.drop_path_rate = drop_path_rate  # stochastic depth while training; no weights of its own
        self.vit = build_vit(space.largest(), space)
        self._templates: dict[Arch, VisionTransformer] = {}

    def _template(self, arch: Arch) -> VisionTransformer:
        """A weightless (meta-device) timm model of the arch's shape, cached."""
        if arch not in self._templates:
            with torch.device("meta"):
                self._templates[arch] = build_vit(arch, self.space, drop_path_rate=self.drop_path_rate)
        return self._templates[arch]

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        arch = arch or self.space.largest()
        if not self.space.valid(arch):
            raise ValueError(f"arch {arch} is outside the search space")
        if x.shape[-1] != arch.img_size:
            x = nn.functional.interpolate(x, size=(arch.img_size, arch.img_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        template = self._template(arch)
        template.train(self.training)
        # parameters as views (gradients reach the shared weights) and buffers (a conv stem's BatchNorm
        # statistics, updated in place while training)
        state = dict(self.vit.named_buffers()) | dict(self.vit.named_parameters())
        weights = slice_state_dict(state, arch, self.space)
        return functional_call(template, weights, (x,))  # (B, num_classes)

    def state_for(self, arch: Arch) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in slice_state_dict(self.vit.state_dict(), arch, self.space).items()}


def extract_subnet(supernet: Supernet, arch: Arch, **kwargs: Any) -> VisionTransformer:
    """A standalone timm VisionTransformer whose outputs equal ``supernet(x, arch)`` (in eval mode).

    ``kwargs`` go to timm (e.g. ``drop_path_rate`` for fine-tuning); they add no weights.
    """
    model = build_vit(arch, supernet.space, **kwargs)
    model.load_state_dict(supernet.state_for(arch))
    return model.eval()
