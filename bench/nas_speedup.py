"""Largest arch vs the arch the search chose for a target: measured latency, top-1, ratio.

Reads what `vitforge demo` (or the search and finetune stages) left in a project root;
--finetune-largest also fine-tunes the largest arch with the same schedule, for test top-1.

    python bench/nas_speedup.py --target cpu-ort-fp32 [--root .] [--finetune-largest]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.models.supernet import Arch
from pipeline.params import load_params, project_root, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="cpu-ort-fp32")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--finetune-largest", action="store_true")
    args = ap.parse_args()
    root = (args.root or project_root()).resolve()
    params = load_params(root)
    search = json.loads((resolve(params["search"]["out_dir"], root) / f"{args.target}.json").read_text())
    ft_path = resolve(params["finetune"]["out_dir"], root) / args.target / "result.json"
    chosen_ft = json.loads(ft_path.read_text())["test_top1"] if ft_path.is_file() else None
    largest_ft = None
    if args.finetune_largest:
        from pipeline.finetune.train import finetune

        ft = finetune(resolve(params["dataset"]["tracked_dir"], root), root / "runs" / "bench-largest", params,
                      Path(search["supernet_weights"]), Arch(**search["largest_arch"]))
        largest_ft = ft.test.top1
    print(f"target {args.target} (budget {search['budget_ms']:g} ms), latency measured p50 on the target")
    print(f"{'':<9} {'arch':<22} {'p50 ms':>8} {'val top-1 (shared)':>19} {'test top-1 (fine-tuned)':>24}")
    for name, arch, ms, val, test in (
            ("largest", search["largest_arch"], search["largest_p50_ms"], search["largest_val_top1"], largest_ft),
            ("chosen", search["arch"], search["measured_p50_ms"], search["val_top1"], chosen_ft)):
        t = f"{test:.4f}" if test is not None else "-"
        print(f"{name:<9} {Arch(**arch).short():<22} {ms:>8.3f} {val:>19.4f} {t:>24}")
    ratio = search["largest_p50_ms"] / search["measured_p50_ms"]
    loss = 100 * (search["largest_val_top1"] - search["val_top1"])
    print(f"speedup {ratio:.1f}x at {loss:+.1f} points val top-1 loss (weight-sharing estimate)"
          + (f"; fine-tuned test top-1 loss {100 * (largest_ft - chosen_ft):+.1f} points" if largest_ft else ""))
    print("goal: >= 10x faster at <= 1 point top-1 loss")


if __name__ == "__main__":
    main()
