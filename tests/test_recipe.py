"""The small-data recipe: seeded per step, soft targets from mixup, layer decay and EMA in the loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from timm.layers import DropPath

from pipeline.models.supernet import SearchSpace, Supernet, extract_subnet
from pipeline.recipe import BatchAugment, Recipe
from pipeline.training import TrainConfig, param_groups, train

FULL = Recipe(rand_augment="rand-m9-mstd0.5-inc1-mmax9", mixup=0.8, cutmix=1.0, mix_prob=1.0, label_smoothing=0.1,
              random_erasing=0.25, drop_path=0.1, max_shift=1)
SPACE = SearchSpace.from_params({"patch_size": 4, "img_sizes": [16], "depths": [1, 3], "embed_dims": [16, 32],
                                 "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [2.0]}, num_classes=4)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % 4


def test_augmentation_is_a_function_of_seed_and_step():
    images, labels = _batch()
    aug = BatchAugment(FULL, 4, [0.5] * 3, [0.5] * 3, seed=0)
    torch.manual_seed(0)
    a = aug(images, labels, step=3)
    torch.manual_seed(0)
    b = aug(images, labels, step=3)
    torch.manual_seed(0)
    c = aug(images, labels, step=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mixup_gives_soft_targets_and_plain_recipe_hard_labels():
    images, labels = _batch()
    x, target = BatchAugment(FULL, 4, [0.5] * 3, [0.5] * 3, seed=0)(images, labels, step=0)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert target.shape == (8, 4) and torch.allclose(target.sum(-1), torch.ones(8))
    plain = Recipe(None, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0)
    aug = BatchAugment(plain, 4, [0.5] * 3, [0.5] * 3, seed=0)
    x, target = aug(images, labels, step=0)
    assert torch.equal(target, labels)
    assert torch.allclose(x, (images.float() / 255 - 0.5) / 0.5)  # nothing but normalization
    logits = torch.randn(8, 4)
    assert aug.loss(logits, target) > 0


def test_stochastic_depth_reaches_the_fine_tuned_model_and_the_supernet():
    model = extract_subnet(Supernet(SPACE), SPACE.largest(), drop_path_rate=0.1)
    assert sum(isinstance(m, DropPath) for m in model.modules()) > 0
    net = Supernet(SPACE, drop_path_rate=0.1)
    assert any(isinstance(m, DropPath) for m in net._template(SPACE.largest()).modules())


def test_layer_decay_scales_lr_per_layer_and_ema_is_kept():
    model = extract_subnet(Supernet(SPACE), SPACE.largest())
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.05, warmup_steps=1, grad_clip=1.0,
                      checkpoint_every=100, seed=0, threads=1, max_steps=3, layer_decay=0.5, ema_decay=0.9)
    scales = sorted({g["lr_scale"] for g in param_groups(model, cfg)})
    assert len(scales) == SPACE.largest().depth + 2 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** 4)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    res = train(model, lambda m, idx, step: torch.nn.functional.cross_entropy(m(x[idx]), y[idx]), 8, cfg)
    assert res.ema is not None
    ema, raw = res.ema.state_dict(), model.state_dict()
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)


def test_run_names_an_unknown_target_before_any_work(project, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(project), "run", "--data",
                           str(tmp_path), "--target", "no-such-target", "--time-budget", "1m"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "unknown target 'no-such-target'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_time_budget_is_a_usage_error(project):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(project), "stage", "finetune",
                           "--target", "cpu-ort-fp32", "--time-budget", "soon"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "time budget 'soon'" in proc.stderr
