"""Largest arch vs the arch the search chose for a target, both fine-tuned the same way.

Reads the search result a project root holds (after `vitforge demo` or the search stage), fine-tunes
the largest arch and the chosen one with the same schedule (``--steps``, the stage's recipe), and
prints the measured p50 of each on the target, their test top-1 and the ratio.

    python bench/nas_speedup.py --root /tmp/demo --target cpu-ort-fp32 [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.finetune.train import finetune
from pipeline.models.supernet import Arch
from pipeline.params import load_params
from pipeline.paths import paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="cpu-ort-fp32")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning steps for each of the two archs")
    args = ap.parse_args()
    root = args.root.resolve()
    params = load_params(root)
    search = json.loads(paths(root, params).search_result(args.target).read_text())
    data = paths(root, params).dataset()
    rows = []
    for name, key, ms in (("largest", "largest_arch", search["largest_p50_ms"]),
                          ("chosen", "arch", search["measured_p50_ms"])):
        arch = Arch(**search[key])
        with tempfile.TemporaryDirectory() as tmp:
            ft = finetune(data, Path(tmp), params, root / search["supernet_weights"], arch,
                          overrides={"max_steps": args.steps})
        rows.append((name, arch, ms, ft.test.top1, ft.test.n))
    print(f"target {args.target} (budget {search['budget_ms']:g} ms); p50 measured on the target; both fine-tuned "
          f"{args.steps} steps")
    print(f"{'':<9} {'arch':<22} {'p50 ms':>8} {'test top-1':>11}")
    for name, arch, ms, top1, n in rows:
        print(f"{name:<9} {arch.short():<22} {ms:>8.3f} {top1:>11.4f}   ({n} test images)")
    (_, _, big_ms, big_top1, _), (_, _, ms, top1, _) = rows
    print(f"speedup {big_ms / ms:.1f}x at {100 * (big_top1 - top1):+.1f} points lower test top-1 "
          "(goal: >= 10x at <= 1 point)")


if __name__ == "__main__":
    main()
