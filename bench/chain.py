"""Run the whole chain (`vitforge demo`) on another dataset, in a fresh project root.

    python bench/chain.py --data ../shared/datasets/hymenoptera --root /tmp/hym \\
        --set space.patch_size=16 --set space.img_sizes=[96,128]

Then point the other benchmarks at it: `python bench/peer.py --root /tmp/hym --img-size 128`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import bench_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a params.yaml value (YAML syntax); repeatable")
    args = ap.parse_args()
    overrides = {"dataset.data": str(args.data.resolve())}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    bench_root(args.root.resolve(), overrides)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(args.root.resolve()), "demo"], check=True)
    print(f"chain on {args.data}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
