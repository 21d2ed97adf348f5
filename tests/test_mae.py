"""MAE: named steps, and a loss that falls on the real digits."""

from __future__ import annotations

import torch

from pipeline.models.supernet import SearchSpace
from pipeline.params import load_params
from pipeline.ssl.mae import MAE, MAEConfig
from pipeline.ssl.train import pretrain


def tiny_mae() -> MAE:
    space = SearchSpace.from_params({"patch_size": 4, "img_sizes": [16], "depths": [2], "embed_dims": [32],
                                     "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [2.0]})
    return MAE(space, MAEConfig(0.75, 16, 1, 2, True))


def test_patchify_roundtrip_and_masking():
    mae = tiny_mae()
    imgs = torch.randn(2, 3, 16, 16)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 48)
    assert torch.equal(mae.unpatchify(patches), imgs)
    x_masked, mask, ids_restore = mae.random_masking(patches, 0.75)
    assert x_masked.shape == (2, 4, 48)
    assert mask.sum(dim=1).tolist() == [12.0, 12.0]
    # the kept tokens are the unmasked ones, in shuffled order
    kept = torch.gather(patches, 1, torch.argsort(ids_restore, dim=1)[:, :4, None].expand(-1, -1, 48))
    assert torch.equal(kept, x_masked)


def test_encoder_names_are_timm_names():
    keys = set(tiny_mae().encoder.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"} <= keys


def test_mae_loss_decreases_on_digits(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    res = pretrain(digits_dataset, tmp_path / "pt", params, overrides={"max_steps": 25, "lr": 3e-3})
    first, last = sum(res.train.history[:5]) / 5, sum(res.train.history[-5:]) / 5
    assert last < 0.9 * first, res.train.history
    assert (tmp_path / "pt" / "backbone.safetensors").is_file()
