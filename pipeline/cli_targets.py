"""``vitforge targets list``: each target's budget beside the space's fastest and largest subnet, measured."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.params import load_params
from pipeline.paths import paths


def cmd_targets_list(args: argparse.Namespace) -> int:
    """Each target with its budget, and the space's fastest and largest subnet measured on it.

    The space fits a target when its fastest subnet runs in at most a quarter of the budget (room to
    search) and its largest in more than the budget (the budget, not the space, binds).
    """
    import tempfile

    from pipeline.data.manifest import MANIFEST_NAME
    from pipeline.models.supernet import SearchSpace
    from pipeline.nas.latency_model import ROBUST_KEYS, measure_arch
    from pipeline.nas.space_fit import concrete, needs_fit, resolve_space
    from pipeline.params import resolve
    from pipeline.targets import TargetError, list_targets, load_target

    params = load_params(args.root)
    space = None
    if needs_fit(params["space"]) and not (paths(args.root, params).dataset() / MANIFEST_NAME).is_file():
        print("space: patch_size/img_sizes are auto, fitted to the images of a dataset version; none yet (run "
              "`vitforge stage dataset`): the space's subnets are measured once there is one")
    elif needs_fit(params["space"]):  # fitted to the images of the current dataset version
        fit = resolve_space(params, args.root, paths(args.root, params).dataset())
        print(f"space fitted to {fit.target} ({fit.budget_ms:g} ms) and the images' native {fit.native_size} px: "
              f"patch_size {fit.space['patch_size']}, img_sizes {fit.space['img_sizes']}")
        params = {**params, "space": fit.space}
    if not needs_fit(params["space"]):
        space = SearchSpace.from_params(concrete(params["space"]), num_classes=2)
    lp, mean, std = params["latency"], params["model"]["mean"], params["model"]["std"]
    header = f"{'target':<16} {'runtime':<12} {'device':<12} {'precision':<9} {'batch':>5} {'budget_ms':>9}"
    print(header + f"  {'fastest_ms':>10} {'largest_ms':>10}  space fits  measurable here")
    for name, path in list_targets(resolve(params["targets_dir"], args.root)).items():
        try:
            t = load_target(path)
        except TargetError as err:
            print(f"{name:<16} invalid: {err}")
            continue
        ok, why = t.measurable_here()
        fastest = largest = "-"
        fits = "-"
        if ok and space is not None:
            with tempfile.TemporaryDirectory(prefix="vitforge-space-") as tmp:
                lo, hi = (measure_arch(a, space, t, Path(tmp), warmup=lp["warmup"], runs=lp["runs"], mean=mean, std=std,
                                       **{k: lp[k] for k in ROBUST_KEYS})
                          for a in (space.smallest(), space.largest()))
            fastest, largest = f"{lo:.3f}", f"{hi:.3f}"
            fits = "yes" if lo <= t.latency_budget_ms / 4 and hi > t.latency_budget_ms else (
                "no: fastest > budget/4" if lo > t.latency_budget_ms / 4 else "no: largest within budget")
        print(f"{name:<16} {t.runtime:<12} {t.device:<12} {t.precision:<9} {t.batch_size:>5} "
              f"{t.latency_budget_ms:>9g}  {fastest:>10} {largest:>10}  {fits:<10}  {'yes' if ok else 'no'} ({why})")
    return 0
