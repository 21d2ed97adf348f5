"""A convolutional stem in place of ViT's patchify layer.

Xiao et al. 2021, "Early Convolutions Help Transformers See Better": a few 3x3
stride-2 convolutions (BatchNorm, ReLU) bring the image down to the patch grid
and a 1x1 convolution projects to the embedding width. It gives a ViT the local
inductive bias it lacks on small data, for a few percent of its FLOPs, and the
model stays a timm ``VisionTransformer`` (this is its ``embed_layer``) that
exports to plain ONNX (the BatchNorms fold into the convolutions).

Weight sharing: the stem is the same for every subnet; only the 1x1 projection
is sliced, by output channel, like the patchify layer it replaces.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import PatchEmbed
from torch import nn

from pipeline.errors import ParamsError


def stem_widths(patch_size: int, width: int) -> list[int]:
    """Channel widths of the stride-2 convolutions: log2(patch_size) of them, doubling from ``width``."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ParamsError(f"params.yaml space: a conv stem needs a power-of-two patch_size, got {patch_size}")
    return [width * 2**i for i in range(patch_size.bit_length() - 1)]


class ConvStem(PatchEmbed):
    """timm's ``PatchEmbed`` interface (grid, patch count, flatten, norm) over a conv stem."""

    def __init__(self, *args: Any, stem_width: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        layers: list[nn.Module] = []
        c = self.proj.in_channels
        for w in stem_widths(self.patch_size[0], stem_width):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, self.proj.out_channels, 1)  # (D, C_stem, 1, 1): sliced by output channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # (B, D, H/p, W/p)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, L, D)


def stem_cost(img_size: int, patch_size: int, in_chans: int, width: int) -> tuple[int, int]:
    """(FLOPs of the stem's 3x3 convolutions for one image, their parameters incl. BatchNorm affine)."""
    flops = params = 0
    c, side = in_chans, img_size
    for w in stem_widths(patch_size, width):
        side //= 2
        flops += 2 * 9 * c * w * side * side
        params += 9 * c * w + 2 * w
        c = w
    return flops, params
