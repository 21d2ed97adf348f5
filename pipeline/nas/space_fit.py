"""Fit the search space's image and patch sizes to the data and the tightest target.

Token count drives a ViT's latency, and the right token count depends on both ends of the chain:
the images (8x8 digit scans carry no more pixels at 32 px) and the device (a 0.2 ms budget cannot
afford 196 tokens). ``space.patch_size: auto`` and ``space.img_sizes: auto`` in params.yaml are
resolved here, by measurement on the tightest target measurable on this machine:

- the top image size is the largest whose *fastest* subnet still runs within the budget (so every
  size in the space has something the search can pick), capped at ``max_upscale`` x the images'
  native size (upsampling further adds tokens but no pixels);
- the bottom image size is the largest at which the fastest subnet runs in at most a quarter of the
  budget (room to search below the budget), and never fewer than 2x2 patches;
- ``n_img_sizes`` sizes are spread evenly between them, multiples of the patch size;
- the patch size is the largest of ``patch_choices`` that still gives the top image size at least
  ``MIN_GRID`` x ``MIN_GRID`` tokens (more pixels per token at the same token count).

Latency grows with image size, so each bound is a binary search over the multiples of the patch
size. The result, with every measurement behind it, is a ``SpaceFit``: the pretrain stage records it
in its weights and MLflow run, and every later stage reads the space from its upstream weights.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.models.supernet import Arch, SearchSpace
from pipeline.targets import Target

log = logging.getLogger(__name__)

AUTO = "auto"
MIN_GRID = 4  # tokens a side at the top image size: fewer leave attention little to relate
# The keys of params.yaml ``space:`` that only steer the fit; the fitted space does not carry them.
FIT_KEYS = ("patch_choices", "n_img_sizes", "max_upscale")


class SpaceFitError(InputError, ValueError):
    """The space cannot be fitted: no native size recorded, no measurable target, a bad fit setting."""


@dataclass
class SpaceFit:
    space: dict[str, Any]  # params.yaml ``space:`` with concrete patch_size and img_sizes
    target: str | None  # the tightest measurable target the sizes were fitted to
    budget_ms: float | None
    native_size: int | None  # the images' native side (the smaller median side)
    fastest_ms: float | None  # the smallest subnet at the smallest image size, measured on the target
    largest_ms: float | None  # the largest subnet at the largest image size
    fits: bool  # fastest <= budget / 4 and largest > budget
    why: str
    measured: list[dict[str, Any]] = field(default_factory=list)  # every measurement the fit took

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def needs_fit(space: dict[str, Any]) -> bool:
    return space.get("patch_size") == AUTO or space.get("img_sizes") == AUTO


def concrete(space: dict[str, Any]) -> dict[str, Any]:
    """``space`` without the fit-only keys; it must not be ``auto`` any more."""
    if needs_fit(space):
        raise SpaceFitError("params.yaml space: patch_size / img_sizes are 'auto' and have not been fitted")
    return {k: v for k, v in space.items() if k not in FIT_KEYS}


def _settings(space: dict[str, Any]) -> tuple[list[int], int, float]:
    try:
        choices = sorted({int(p) for p in space.get("patch_choices") or [space["patch_size"]]}, reverse=True)
        n_sizes, upscale = int(space.get("n_img_sizes", 3)), float(space.get("max_upscale", 2.0))
    except (TypeError, ValueError) as err:
        raise SpaceFitError(f"params.yaml space: patch_choices / n_img_sizes / max_upscale: {err}") from None
    if space.get("patch_size") != AUTO:
        choices = [int(space["patch_size"])]
    if not choices or min(choices) < 1 or n_sizes < 1 or upscale <= 0:
        raise SpaceFitError("params.yaml space: patch_choices needs positive sizes, n_img_sizes >= 1, "
                            "max_upscale > 0")
    return choices, n_sizes, upscale


def ladder(lo: int, hi: int, n: int, patch: int) -> list[int]:
    """At most ``n`` multiples of ``patch`` from ``lo`` to ``hi``, both ends included, evenly spread."""
    grid = list(range(lo, hi + 1, patch))
    if len(grid) <= n:
        return grid
    if n == 1:
        return [hi]
    return sorted({grid[round(i * (len(grid) - 1) / (n - 1))] for i in range(n)})


def _last_true(cands: list[int], ok: Callable[[int], bool]) -> int | None:
    """The last candidate for which ``ok`` holds, ``ok`` being true up to a point and false after."""
    lo, hi, best = 0, len(cands) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if ok(cands[mid]):
            best, lo = cands[mid], mid + 1
        else:
            hi = mid - 1
    return best


def fit_sizes(space: dict[str, Any], native: int, budget_ms: float,
              measure: Callable[[SearchSpace, Arch], float]) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Concrete ``patch_size`` and ``img_sizes`` for ``space`` (the rest as given).

    ``measure(space, arch)`` is the p50 in ms of ``arch`` on the target. Returns the fitted space,
    the measurements taken and a note on any bound that could not be met.
    """
    choices, n_sizes, upscale = _settings(space)
    fixed_sizes = None if space.get("img_sizes") == AUTO else sorted(int(s) for s in space["img_sizes"])
    cap = max(int(native * upscale), 1)
    measured: list[dict[str, Any]] = []
    cache: dict[tuple[int, int, str], float] = {}
    options = []
    for patch in choices:
        if fixed_sizes is not None:  # the largest patch that divides every size and leaves a usable grid
            if all(s % patch == 0 for s in fixed_sizes):
                options.append((patch, fixed_sizes, ""))
                if fixed_sizes[-1] // patch >= MIN_GRID:
                    break
            continue
        trial = concrete({**space, "patch_size": patch, "img_sizes": [patch]})
        probe = SearchSpace.from_params(trial)

        def ms(size: int, which: str, patch: int = patch, probe: SearchSpace = probe,
               trial: dict[str, Any] = trial) -> float:
            key = (patch, size, which)
            if key not in cache:
                base = probe.smallest() if which == "smallest" else probe.largest()
                arch = Arch(base.depth, base.embed_dim, base.mlp_ratio, size)
                cache[key] = measure(SearchSpace.from_params({**trial, "img_sizes": [size]}), arch)
                measured.append({"patch_size": patch, "img_size": size, "arch": which, "p50_ms": cache[key]})
                log.info("space fit: patch %d, %d px, %s subnet: %.3f ms", patch, size, which, cache[key])
            return cache[key]

        cands = [patch * t for t in range(2, cap // patch + 1)]  # at least 2x2 patches
        if not cands:
            continue
        hi = _last_true(cands, lambda s: ms(s, "smallest") <= budget_ms)
        note = ""
        if hi is None:
            hi, note = cands[0], f"the fastest subnet exceeds the budget even at {cands[0]} px"
        lo = _last_true([s for s in cands if s <= hi], lambda s: ms(s, "smallest") <= budget_ms / 4)
        if lo is None:
            lo = cands[0]
            note = note or f"the fastest subnet exceeds a quarter of the budget even at {lo} px"
        options.append((patch, ladder(lo, hi, n_sizes, patch), note))
        if hi // patch >= MIN_GRID:
            break  # the largest patch with a usable token grid
    if not options and fixed_sizes is not None:
        raise SpaceFitError(f"params.yaml space.patch_choices {choices}: none divides every one of img_sizes "
                            f"{fixed_sizes}")
    if not options:
        raise SpaceFitError(f"params.yaml space.patch_choices {choices}: every patch is larger than half the "
                            f"images' native side ({native} px) x max_upscale")
    patch, sizes, note = options[-1]
    return {**space, "patch_size": patch, "img_sizes": sizes}, measured, note


def fit_space(space: dict[str, Any], native_size: list[int] | None, targets: list[Target], *, warmup: int,
              runs: int, mean: list[float], std: list[float]) -> SpaceFit:
    """Resolve ``auto`` in ``space`` against the tightest of ``targets`` (those measurable here)."""
    measurable = [t for t in targets if t.measurable_here()[0]]
    if not needs_fit(space):
        return SpaceFit(concrete(space), None, None, None, None, None, True, "given in params.yaml")
    if not native_size:
        raise SpaceFitError("params.yaml space is 'auto' but the dataset version records no native image size: "
                            "run the dataset stage again")
    if not measurable:
        raise SpaceFitError("params.yaml space is 'auto' but no target in targets_dir can be measured on this "
                            "machine: give space.patch_size and space.img_sizes")
    tight = min(measurable, key=lambda t: t.latency_budget_ms)
    native = min(int(v) for v in native_size)

    with tempfile.TemporaryDirectory(prefix="vitforge-space-fit-") as tmp:
        from pipeline.nas.latency_model import measure_arch

        def measure(s: SearchSpace, arch: Arch) -> float:
            return measure_arch(arch, s, tight, Path(tmp), warmup=warmup, runs=runs, mean=mean, std=std)

        fitted, measured, note = fit_sizes(space, native, tight.latency_budget_ms, measure)
        final = SearchSpace.from_params(concrete(fitted))
        fastest = next((m["p50_ms"] for m in measured if m["patch_size"] == final.patch_size
                        and m["img_size"] == final.img_sizes[0] and m["arch"] == "smallest"), None)
        fastest = fastest if fastest is not None else measure(final, final.smallest())
        largest = measure(final, final.largest())
    budget = tight.latency_budget_ms
    fits = fastest <= budget / 4 and largest > budget
    why = note or ("fastest <= budget/4 and largest > budget" if fits else
                   "the largest subnet runs within the budget: widen depths / embed_dims" if largest <= budget
                   else "the fastest subnet needs more than a quarter of the budget")
    log.info("space fitted to %s (%.3g ms, native %d px): patch %d, img_sizes %s; fastest %.3f ms, largest %.3f ms",
             tight.name, budget, native, final.patch_size, list(final.img_sizes), fastest, largest)
    return SpaceFit(concrete(fitted), tight.name, budget, native, fastest, largest, fits, why, measured)


def resolve_space(params: dict[str, Any], root: Path, data_dir: Path,
                  upstream: dict[str, Any] | None = None) -> SpaceFit:
    """The concrete space of a stage.

    ``upstream`` is the space recorded in the weights the stage starts from: its fitted sizes are
    taken as they are (a stage never re-measures what its parent was trained at); the other keys
    still come from params.yaml, so a changed space fails loudly at load time.
    """
    from pipeline.data.manifest import load_manifest
    from pipeline.params import resolve
    from pipeline.targets import TargetError, list_targets, load_target

    space = params["space"]
    if needs_fit(space) and upstream is not None:
        taken = {k: upstream[k] for k in ("patch_size", "img_sizes") if space.get(k) == AUTO}
        return SpaceFit(concrete({**space, **taken}), None, None, None, None, None, True,
                        "fitted sizes taken from the upstream weights")
    if not needs_fit(space):
        return fit_space(space, None, [], warmup=0, runs=0, mean=[], std=[])
    targets = []
    for name, path in list_targets(resolve(params["targets_dir"], root)).items():
        try:
            targets.append(load_target(path))
        except TargetError as err:
            log.warning("space fit skips target %s: %s", name, err)
    lp = params["latency"]
    return fit_space(space, load_manifest(data_dir).native_size, targets, warmup=lp["warmup"], runs=lp["runs"],
                     mean=params["model"]["mean"], std=params["model"]["std"])
