"""The small-data recipe for training ViTs, from timm's implementations.

DeiT (Touvron et al., 2021) trains ViTs without a giant dataset with RandAugment,
mixup/cutmix, random erasing, label smoothing, stochastic depth and an EMA of
the weights; MAE's fine-tuning adds layer-wise learning-rate decay. timm ships
every piece; this module only wires them to the in-memory uint8 batches the
stages train on. Supernet training and fine-tuning share it, each with its own
knobs in params.yaml.

Every random draw of a batch is seeded by (seed, step), so a resumed run
augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.data.tensors import normalize


@dataclass(frozen=True)
class Recipe:
    rand_augment: str | None  # timm config string, e.g. "rand-m9-mstd0.5-inc1"; None: off
    mixup: float  # mixup alpha; 0: off
    cutmix: float  # cutmix alpha; 0: off
    mix_prob: float  # probability that a batch is mixed at all
    label_smoothing: float
    random_erasing: float  # probability per image
    drop_path: float  # stochastic depth rate of the deepest block
    max_shift: int  # random translation in pixels

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> Recipe:
        return cls(**{k: p[k] for k in cls.__dataclass_fields__})


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (reflect padding): cheap, label-preserving."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dx = torch.randint(0, 2 * max_shift + 1, (b,))
    dy = torch.randint(0, 2 * max_shift + 1, (b,))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


class BatchAugment:
    """uint8 images (B, 3, S, S) and labels -> normalized, augmented inputs and (soft) targets."""

    def __init__(self, recipe: Recipe, num_classes: int, mean: list[float], std: list[float], seed: int):
        from timm.data import Mixup
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        self.recipe, self.num_classes, self.mean, self.std, self.seed = recipe, num_classes, mean, std, seed
        self.rand_augment = None
        if recipe.rand_augment:
            fill = tuple(round(255 * m) for m in mean)
            self.rand_augment = rand_augment_transform(recipe.rand_augment, {"img_mean": fill})
        self.mixup = None
        if recipe.mix_prob > 0 and (recipe.mixup > 0 or recipe.cutmix > 0):
            self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mix_prob,
                               label_smoothing=recipe.label_smoothing, num_classes=num_classes)
        self.erasing = None
        if recipe.random_erasing > 0:
            self.erasing = RandomErasing(recipe.random_erasing, mode="pixel", device="cpu")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's transforms draw from Python's and NumPy's generators: seed both per step.
        random.seed(self.seed * 1_000_003 + step)
        np.random.seed((self.seed * 1_000_003 + step) % 2**32)
        if self.rand_augment is not None:
            pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
            images = torch.stack([torch.from_numpy(np.array(self.rand_augment(im))).permute(2, 0, 1)
                                  for im in pil])  # (B, 3, S, S) uint8
        x = random_shift(normalize(images, self.mean, self.std), self.recipe.max_shift)
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mixup is not None and len(x) % 2 == 0:  # timm's batch mixing pairs the batch with its flip
            return self.mixup(x, labels)
        return x, labels

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from timm.loss import SoftTargetCrossEntropy

        if target.dim() == 2:  # soft targets from mixup/cutmix (label smoothing already applied)
            return SoftTargetCrossEntropy()(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.recipe.label_smoothing)
