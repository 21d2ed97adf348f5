"""``vitforge demo`` and ``vitforge run``: the whole chain, stage after stage, as ``vitforge stage`` runs each.

dataset -> pretrain -> supernet -> search -> finetune -> package for one target, then a summary. With
``--time-budget`` the training stages share it (params.yaml ``budget.shares``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline import cli
from pipeline.params import load_params
from pipeline.paths import paths


def _run_chain(args: argparse.Namespace) -> int:
    """dataset -> pretrain -> supernet -> search -> finetune -> package for ``args.target``.

    With ``--time-budget`` the training stages share it (params.yaml ``budget.shares``); the dataset
    and package stages are fixed costs outside it.
    """
    from pipeline.budget import ChainBudget, parse_duration

    start = time.perf_counter()
    args.resume = False
    params = load_params(args.root)
    total_s = parse_duration(str(args.time_budget)) if args.time_budget else None
    t = args.target
    chain = [("dataset", cli.cmd_stage_dataset, None), ("pretrain", cli.cmd_stage_pretrain, "pretrain"),
             ("supernet", cli.cmd_stage_supernet, "supernet"), (f"search {t}", cli.cmd_stage_search, "search"),
             (f"finetune {t}", cli.cmd_stage_finetune, "finetune"), (f"package {t}", cli.cmd_stage_package, None)]
    budget = None
    cut: list[str] = []  # stages left with under half their share by the ones before them
    for name, step, share in chain:
        if total_s is not None and budget is None and share:  # the clock starts after the dataset stage
            budget = ChainBudget(total_s, params["budget"]["shares"])
        args.time_budget_s = budget.for_stage(share) if budget and share else None
        note = f" (time budget {args.time_budget_s:.0f} s)" if args.time_budget_s is not None else ""
        print(f"== {name}{note}", flush=True)
        if args.time_budget_s is not None and args.time_budget_s < budget.nominal_s(share) / 2:
            cut.append(f"{share} {args.time_budget_s:.0f} of {budget.nominal_s(share):.0f} s")
            print(f"warning: {share} gets {args.time_budget_s:.0f} s of its {budget.nominal_s(share):.0f} s share, "
                  "as the stages before it overran (fixed costs: latency measurements, brief fine-tunes); a training "
                  "loop still takes its min_steps. A longer --time-budget gives it its share.", flush=True)
        t0 = time.perf_counter()
        rc = step(args)
        if rc:
            return rc
        if budget and share:
            budget.done(share, time.perf_counter() - t0)
    _print_summary(args.root, args.target)
    if budget:
        print("  " + "  ".join(f"{k} {v:.0f} s" for k, v in budget.spent.items())
              + f"  (budget {budget.total_s:.0f} s for the training stages)")
    if cut:
        print(f"  cut short: {'; '.join(cut)} (see the warnings above)")
    print(f"finished in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole chain, as far as it is built, on the packaged digits."""
    args.data, args.format, args.skip_invalid = None, None, False
    demo = load_params(args.root)["demo"]
    args.target = demo["target"]
    args.time_budget = args.time_budget or demo["time_budget"]
    return _run_chain(args)


def cmd_run(args: argparse.Namespace) -> int:
    """The whole chain on a user's dataset, for one target."""
    from pipeline.stages.search import resolve_target

    resolve_target(args.root, load_params(args.root), args.target)  # an unknown target fails before any work
    args.data = cli._data_arg(args.data)  # a folder given on the command line is taken from the cwd
    args.unlabeled = str(Path(args.unlabeled).resolve()) if args.unlabeled else None
    return _run_chain(args)


def _print_summary(root: Path, target: str) -> None:

    params = load_params(root)
    arch = cli._read_json(paths(root, params).search_result(target), "search")
    pkg = cli._read_json(paths(root, params).package_result(target), "package")
    rows = [("dataset version", arch["dataset_version"]),
            ("target", f"{target} (budget {arch['budget_ms']:g} ms)"),
            ("arch", ", ".join(f"{k}={v}" for k, v in arch["arch"].items())),
            ("test top-1 (engine)", f"{pkg['test_top1']:.4f}"),
            ("latency p50 / p99", f"{pkg['p50_ms']:.3f} / {pkg['p99_ms']:.3f} ms"),
            ("largest arch p50", f"{arch['largest_p50_ms']:.3f} ms"),
            ("speedup vs largest", f"{arch['largest_p50_ms'] / pkg['p50_ms']:.1f}x"),
            ("registered", f"{pkg['registered_model']} v{pkg['registered_version']} @{pkg['candidate_alias']}")]
    print("\n== summary")
    for k, v in rows:
        print(f"  {k:<22} {v}")
