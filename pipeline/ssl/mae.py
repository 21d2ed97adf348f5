"""Masked autoencoder (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

The encoder is the supernet's largest arch as a plain timm ``VisionTransformer``
(its state dict loads straight into the supernet); the decoder is a few timm
``Block``s. The steps are named as in the MAE reference code: ``patchify``,
``random_masking``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from pipeline.models.supernet import SearchSpace, build_vit


@dataclass(frozen=True)
class MAEConfig:
    mask_ratio: float
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    norm_pix_loss: bool

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings, (1, grid*grid [+1], dim)."""
    coords = np.stack(np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)), 0)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D/2)

    emb = np.concatenate([embed_1d(coords[0]), embed_1d(coords[1])], axis=1)  # (G*G, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


class MAE(nn.Module):
    def __init__(self, space: SearchSpace, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        arch = space.largest()
        self.patch_size = space.patch_size
        self.grid = arch.img_size // space.patch_size
        # Encoder: the largest subnet as timm builds it (no head). Its names are the supernet's names.
        self.encoder = build_vit(arch, SearchSpace(**{**space.__dict__, "num_classes": 0}))
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_pos_embed(arch.embed_dim, self.grid))
        d, dd = arch.embed_dim, cfg.decoder_dim
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(dd, self.grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(dd, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, space.patch_size ** 2 * space.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C)"""
        p, g = self.patch_size, self.grid
        b, c = imgs.shape[:2]
        x = imgs.reshape(b, c, g, p, g, p)
        x = torch.einsum("bchpwq->bhwpqc", x)
        return x.reshape(b, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)"""
        p, g = self.patch_size, self.grid
        b = x.shape[0]
        x = x.reshape(b, g, g, p, p, -1)
        x = torch.einsum("bhwpqc->bchpwq", x)
        return x.reshape(b, -1, g * p, g * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float):
        """Keep a random (1 - mask_ratio) of the tokens per sample: per-sample shuffle by argsort of noise."""
        b, n, d = x.shape  # (B, L, D)
        keep = int(n * (1 - mask_ratio))
        noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # (B, keep, D)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, L): 1 = masked
        return x_masked, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        enc = self.encoder
        x = enc.patch_embed(imgs)  # (B, L, D)
        x = x + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1+keep, D)
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)  # (B, 1+keep, Dd)
        b, n_vis, dd = x.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] + 1 - n_vis, -1)
        tokens = torch.cat([x[:, 1:, :], masked], dim=1)  # (B, L, Dd), in shuffled order
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # unshuffle
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]  # (B, L, p*p*C)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches, on per-patch normalized pixels if configured."""
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        """(masked input, reconstruction with visible patches pasted in) in the input's pixel space."""
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:  # undo the per-patch normalization with the true patch statistics
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        m = mask.unsqueeze(-1)
        masked = self.unpatchify(target * (1 - m))
        recon = self.unpatchify(target * (1 - m) + pred * m)
        return masked, recon
