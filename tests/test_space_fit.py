"""Fitting the space's patch and image sizes to the images' native size and the tightest target."""

from __future__ import annotations

import pytest

from pipeline.models.supernet import Arch, SearchSpace, num_tokens
from pipeline.nas.space_fit import SpaceFitError, fit_sizes, fit_space, ladder

SPACE = {"patch_size": "auto", "patch_choices": [4, 8, 16], "img_sizes": "auto", "n_img_sizes": 3,
         "max_upscale": 2.0, "depths": [2, 4], "embed_dims": [64, 128], "head_dim": 32, "mlp_ratios": [2.0, 4.0],
         "stem": "patch", "stem_width": 16}


def cost_ms(space: SearchSpace, arch: Arch) -> float:
    """A latency that grows with tokens x depth x width, as a ViT's does (plus a fixed overhead)."""
    return 0.02 + 2e-6 * num_tokens(arch, space.patch_size) * arch.depth * arch.embed_dim * (1 + arch.mlp_ratio)


def smallest_ms(patch: int, size: int) -> float:
    space = SearchSpace.from_params({**SPACE, "patch_size": patch, "img_sizes": [size]})
    return cost_ms(space, Arch(2, 64, 2.0, size))


@pytest.mark.parametrize("native,budget", [(8, 0.2), (300, 0.4), (300, 2.0), (64, 0.1)])
def test_fitted_sizes_hold_the_bounds(native, budget):
    calls = []

    def measure(space, arch):
        calls.append((space.patch_size, arch.img_size))
        return cost_ms(space, arch)

    fitted, measured, note = fit_sizes(SPACE, native, budget, measure)
    p, sizes = fitted["patch_size"], fitted["img_sizes"]
    assert p in SPACE["patch_choices"] and not note
    assert sizes == sorted(sizes) and all(s % p == 0 for s in sizes) and 1 <= len(sizes) <= 3
    assert sizes[0] >= 2 * p and sizes[-1] <= 2 * native
    assert smallest_ms(p, sizes[0]) <= budget / 4  # room to search below the budget
    assert smallest_ms(p, sizes[-1]) <= budget  # every size has a subnet the search can pick
    # the bounds are the largest such sizes: one patch more breaks them (or passes the upscale cap)
    over = sizes[-1] + p
    assert over > 2 * native or smallest_ms(p, over) > budget
    assert smallest_ms(p, sizes[0] + p) > budget / 4 or sizes[0] + p > sizes[-1]
    # the largest patch that still gives a 4x4 token grid at the top size
    larger = [q for q in SPACE["patch_choices"] if q > p]
    assert sizes[-1] // p >= 4 or not larger
    assert len(measured) == len(set(calls)) == len(calls)  # each (patch, size) measured once
    assert len(calls) < 40  # binary searches, not a sweep


def test_digit_scans_get_4px_patches_up_to_twice_their_size():
    fitted, _, _ = fit_sizes(SPACE, 8, 0.1, cost_ms)  # 8 px fits a quarter of it, 12 px does not
    assert fitted["patch_size"] == 4 and fitted["img_sizes"] == [8, 12, 16]


def test_large_photos_get_large_patches():
    fitted, _, _ = fit_sizes(SPACE, 300, 2.0, cost_ms)
    assert fitted["patch_size"] == 16


def test_an_unreachable_quarter_is_reported_not_hidden():
    fitted, _, note = fit_sizes(SPACE, 8, 0.05, cost_ms)  # the fixed overhead alone is 0.02 ms
    assert "quarter of the budget" in note or "exceeds the budget" in note
    assert fitted["img_sizes"][0] == 2 * fitted["patch_size"]


def test_given_sizes_are_kept_and_given_patch_is_the_only_choice():
    fitted, _, _ = fit_sizes({**SPACE, "img_sizes": [32, 48]}, 300, 0.4, cost_ms)
    assert fitted["img_sizes"] == [32, 48] and fitted["patch_size"] == 8  # 16 leaves a 3x3 grid at 48 px
    fitted, _, _ = fit_sizes({**SPACE, "img_sizes": [24, 40]}, 300, 0.4, cost_ms)
    assert fitted["patch_size"] == 8  # 16 divides neither; 8 divides both, a 5x5 grid at 40 px
    with pytest.raises(SpaceFitError, match="none divides"):
        fit_sizes({**SPACE, "img_sizes": [30]}, 300, 0.4, cost_ms)
    fitted, _, _ = fit_sizes({**SPACE, "patch_size": 8}, 300, 0.4, cost_ms)
    assert fitted["patch_size"] == 8


def test_ladder_is_even_and_on_the_patch_grid():
    assert ladder(8, 16, 3, 4) == [8, 12, 16]
    assert ladder(32, 128, 3, 16) == [32, 80, 128]
    assert ladder(16, 16, 3, 4) == [16]
    assert ladder(12, 16, 3, 4) == [12, 16]  # only two multiples of 4 between them
    assert ladder(8, 40, 1, 4) == [40]


def test_a_space_without_a_native_size_or_target_says_what_to_do():
    with pytest.raises(SpaceFitError, match="native image size"):
        fit_space(SPACE, None, [], warmup=1, runs=1, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(SpaceFitError, match="no target"):
        fit_space(SPACE, [8, 8], [], warmup=1, runs=1, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match="fitted by the pretrain stage"):
        SearchSpace.from_params(SPACE)
