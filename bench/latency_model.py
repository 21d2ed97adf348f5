"""Fit a target's latency model and print its error on held-out subnets.

    python bench/latency_model.py --target cpu-ort-fp32 [--holdout 20]
"""

from __future__ import annotations

import argparse
import time

import pipeline  # noqa: F401
from pipeline.models.supernet import Arch, SearchSpace
from pipeline.nas.latency_model import fit_latency_model
from pipeline.nas.space_fit import resolve_space
from pipeline.params import load_params, project_root, resolve
from pipeline.paths import paths
from pipeline.targets import list_targets, load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="cpu-ort-fp32")
    ap.add_argument("--fit", type=int, default=None, help="default: latency.n_fit")
    ap.add_argument("--holdout", type=int, default=None, help="default: latency.n_holdout")
    args = ap.parse_args()
    params = load_params()
    lp = params["latency"]
    path = list_targets(resolve(params["targets_dir"], project_root()))[args.target]
    target = load_target(path)
    # an `auto` space is fitted to the project's current dataset version, as the pretrain stage does
    fitted = resolve_space(params, project_root(), paths(project_root(), params).dataset())
    space = SearchSpace.from_params(fitted.space, num_classes=10)
    t0 = time.perf_counter()
    model = fit_latency_model(space, target, path, n_fit=args.fit or lp["n_fit"],
                              n_holdout=args.holdout or lp["n_holdout"], warmup=lp["warmup"], runs=lp["runs"],
                              seed=params["seed"], mean=params["model"]["mean"], std=params["model"]["std"])
    print(f"target {target.name}: {len(model.fit)} subnets fitted, {len(model.holdout)} held out, "
          f"{time.perf_counter() - t0:.0f} s; features {model.feature_names}")
    print(f"{'held-out arch':<26} {'measured':>9} {'predicted':>9} {'error':>7}")
    for m in model.holdout:
        pred = model.predict(Arch(**m.arch), space)
        err = 100 * abs(pred - m.p50_ms) / m.p50_ms
        print(f"{Arch(**m.arch).short():<26} {m.p50_ms:>8.3f}  {pred:>8.3f}  {err:>6.1f}%")
    print(f"MAPE {100 * model.mape:.2f} %   max error {100 * model.max_error:.2f} %   (goal: MAPE <= 5 %)")


if __name__ == "__main__":
    main()
