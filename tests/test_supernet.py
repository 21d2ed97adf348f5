"""The weight-sharing supernet: subnets are plain timm ViTs equal to the supernet at their arch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.supernet import Arch, SearchSpace, Supernet, arch_flops, arch_params, build_vit, extract_subnet

SPACE = {"patch_size": 4, "img_sizes": [16, 24, 32], "depths": [1, 2, 3], "embed_dims": [24, 48, 96],
         "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [1.0, 2.0, 4.0]}


@pytest.fixture(scope="module", params=["patch", "conv"])
def trained_supernet(request) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SearchSpace.from_params({**SPACE, "stem": request.param}, num_classes=7))
    with torch.no_grad():  # random weights everywhere, so no slice hides behind zeros or ones
        for p in net.parameters():
            p.normal_(0, 0.2)
        for name, b in net.vit.named_buffers():  # BatchNorm statistics of a conv stem, not the init's 0 and 1
            if b.is_floating_point():
                b.uniform_(0.5, 1.5) if "var" in name else b.normal_(0, 0.2)
    return net.eval()


def reference_subnet(net: Supernet, arch: Arch) -> VisionTransformer:
    """The subnet built module by module from the timm modules, independently of ``slice_state_dict``.

    Attention weights are cut per head: (3, heads, head_dim, width) for qkv and (width, heads, head_dim)
    for the projection, keeping the first whole heads.
    """
    space, big = net.space, net.vit
    d, hd = arch.embed_dim, space.head_dim
    h, hmax, dmax = d // hd, big.embed_dim // hd, big.embed_dim
    hidden = int(d * arch.mlp_ratio)
    sub = build_vit(arch, space).eval()
    with torch.no_grad():
        if space.stem == "conv":  # the stem is every subnet's, whole
            sub.patch_embed.stem.load_state_dict(big.patch_embed.stem.state_dict())
        sub.patch_embed.proj.weight.copy_(big.patch_embed.proj.weight[:d])
        sub.patch_embed.proj.bias.copy_(big.patch_embed.proj.bias[:d])
        sub.cls_token.copy_(big.cls_token[..., :d])
        grid, old = arch.img_size // space.patch_size, int((big.pos_embed.shape[1] - 1) ** 0.5)
        patch_pos = big.pos_embed[:, 1:, :d]
        if grid != old:
            patch_pos = F.interpolate(patch_pos.reshape(1, old, old, d).permute(0, 3, 1, 2), size=(grid, grid),
                                      mode="bicubic", antialias=True, align_corners=False)
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, d)
        sub.pos_embed.copy_(torch.cat([big.pos_embed[:, :1, :d], patch_pos], dim=1))
        for s_blk, b_blk in zip(sub.blocks, big.blocks[: arch.depth], strict=True):
            qkv_w = b_blk.attn.qkv.weight.view(3, hmax, hd, dmax)[:, :h, :, :d]
            s_blk.attn.qkv.weight.copy_(qkv_w.reshape(3 * d, d))
            s_blk.attn.qkv.bias.copy_(b_blk.attn.qkv.bias.view(3, hmax, hd)[:, :h].reshape(3 * d))
            s_blk.attn.proj.weight.copy_(b_blk.attn.proj.weight.view(dmax, hmax, hd)[:d, :h].reshape(d, d))
            s_blk.attn.proj.bias.copy_(b_blk.attn.proj.bias[:d])
            for norm in ("norm1", "norm2"):
                getattr(s_blk, norm).weight.copy_(getattr(b_blk, norm).weight[:d])
                getattr(s_blk, norm).bias.copy_(getattr(b_blk, norm).bias[:d])
            s_blk.mlp.fc1.weight.copy_(b_blk.mlp.fc1.weight[:hidden, :d])
            s_blk.mlp.fc1.bias.copy_(b_blk.mlp.fc1.bias[:hidden])
            s_blk.mlp.fc2.weight.copy_(b_blk.mlp.fc2.weight[:d, :hidden])
            s_blk.mlp.fc2.bias.copy_(b_blk.mlp.fc2.bias[:d])
        sub.norm.weight.copy_(big.norm.weight[:d])
        sub.norm.bias.copy_(big.norm.bias[:d])
        sub.head.weight.copy_(big.head.weight[:, :d])
        sub.head.bias.copy_(big.head.bias)
    return sub


def spread_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """The largest, the smallest and random archs of the space: ``n`` distinct ones, sorted."""
    rng = random.Random(seed)
    archs = {space.largest(), space.smallest()}
    while len(archs) < n:
        archs.add(space.sample(rng))
    return sorted(archs)


def test_subnets_match_slices_computed_independently(trained_supernet):
    space = trained_supernet.space
    for arch in spread_archs(space, 10, seed=1):
        sub = extract_subnet(trained_supernet, arch)
        got, want = sub.state_dict(), reference_subnet(trained_supernet, arch).state_dict()
        assert got.keys() == want.keys()
        for name in want:
            assert torch.allclose(got[name], want[name], atol=1e-6), (arch, name)
        assert sub.blocks[0].attn.num_heads == arch.embed_dim // space.head_dim


def test_extracted_subnets_equal_the_supernet(trained_supernet):
    """Both the supernet's forward and the extracted subnet go through ``slice_state_dict``; the reference
    subnet is cut module by module without it, so a wrong slice shows on one side."""
    x = torch.randn(3, 3, 32, 32)
    for arch in spread_archs(trained_supernet.space, 12, seed=0):
        sub = extract_subnet(trained_supernet, arch)
        assert type(sub) is VisionTransformer
        assert len(sub.blocks) == arch.depth and sub.embed_dim == arch.embed_dim
        x_in = F.interpolate(x, size=(arch.img_size, arch.img_size), mode="bilinear", antialias=True,
                             align_corners=False)
        with torch.no_grad():
            want = reference_subnet(trained_supernet, arch)(x_in)
            diff = (trained_supernet(x, arch) - want).abs().max().item()
            diff_sub = (sub(x_in) - want).abs().max().item()
        assert diff < 1e-5, (arch, diff)
        assert diff_sub < 1e-5, (arch, diff_sub)


def test_subnets_share_weights_by_slicing(trained_supernet):
    small = trained_supernet.space.smallest()
    sub = extract_subnet(trained_supernet, small)
    big = trained_supernet.vit.state_dict()
    d = small.embed_dim
    assert torch.equal(sub.blocks[0].mlp.fc1.weight, big["blocks.0.mlp.fc1.weight"][: int(d * small.mlp_ratio), :d])
    q_rows = big["blocks.0.attn.qkv.weight"][:d, :d]
    assert torch.equal(sub.blocks[0].attn.qkv.weight[:d], q_rows)


def test_gradients_reach_the_shared_weights():
    net = Supernet(SearchSpace.from_params(SPACE, num_classes=3))
    arch = net.space.smallest()
    net(torch.randn(2, 3, 32, 32), arch).sum().backward()
    g = net.vit.blocks[0].attn.qkv.weight.grad
    assert g is not None and g[: arch.embed_dim, : arch.embed_dim].abs().sum() > 0
    assert net.vit.blocks[-1].attn.qkv.weight.grad is None  # depth 1: the last block is not used


@pytest.mark.parametrize("stem", ["patch", "conv"])
@pytest.mark.parametrize("arch", [Arch(3, 96, 4.0, 32), Arch(1, 24, 1.0, 16), Arch(2, 48, 2.0, 24)])
def test_flops_and_params_are_computed_not_guessed(arch, stem):
    space = SearchSpace.from_params({**SPACE, "stem": stem}, num_classes=10)
    net = Supernet(space)
    sub = extract_subnet(net, arch)
    for blk in sub.blocks:
        blk.attn.fused_attn = False  # the counter does not see CPU's fused attention kernel
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        sub(torch.randn(1, 3, arch.img_size, arch.img_size))
    assert arch_flops(arch, space) == counter.get_total_flops()
    assert arch_params(arch, space) == sum(p.numel() for p in sub.parameters())


def test_space_bounds_come_from_params():
    space = SearchSpace.from_params(SPACE)
    assert space.largest() == Arch(3, 96, 4.0, 32)
    assert space.smallest() == Arch(1, 24, 1.0, 16)
    assert all(space.valid(a) for a in space.all_archs())
    assert space.num_heads(space.largest()) == 12 and space.num_heads(space.smallest()) == 3
    with pytest.raises(ValueError, match="img_sizes: 30 is not a multiple of patch_size 4"):
        SearchSpace.from_params({**SPACE, "img_sizes": [30]})
    with pytest.raises(ValueError, match="embed_dims: 20 is not a multiple of head_dim 8"):
        SearchSpace.from_params({**SPACE, "embed_dims": [20, 48]})
    with pytest.raises(ValueError, match="outside the search space"):
        Supernet(space)(torch.randn(1, 3, 32, 32), Arch(9, 96, 4.0, 32))


def test_conv_stem_trains_shared_weights_and_statistics_and_exports_to_plain_onnx(tmp_path):
    import numpy as np

    from pipeline.export.onnx import export_onnx
    from pipeline.targets.runners import ort_session

    space = SearchSpace.from_params({**SPACE, "stem": "conv"}, num_classes=3)
    net = Supernet(space).train()
    arch = space.smallest()
    before = net.vit.patch_embed.stem[1].running_mean.clone()
    net(torch.randn(4, 3, 32, 32), arch).sum().backward()
    assert net.vit.patch_embed.stem[0].weight.grad.abs().sum() > 0
    assert not torch.equal(net.vit.patch_embed.stem[1].running_mean, before)  # statistics updated in place
    sub = extract_subnet(net.eval(), arch)
    path = export_onnx(sub, tmp_path / "m.onnx", input_size=arch.img_size, mean=[0.5] * 3, std=[0.5] * 3)
    images = np.random.default_rng(0).integers(0, 256, (2, arch.img_size, arch.img_size, 3), dtype=np.uint8)
    out = ort_session(path, 1).run(None, {"image": images})[0]
    with torch.no_grad():
        ref = sub((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).numpy()
    assert np.abs(out - ref).max() < 1e-4
    with pytest.raises(ValueError, match="conv stem needs a power-of-two patch_size, got 6"):
        SearchSpace.from_params({**SPACE, "stem": "conv", "patch_size": 6, "img_sizes": [12]})
    with pytest.raises(ValueError, match="space.stem: expected 'patch' or 'conv'"):
        SearchSpace.from_params({**SPACE, "stem": "hybrid"})
