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

from common import bench_root, parse_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a params.yaml value (YAML syntax); repeatable")
    args = ap.parse_args()
    bench_root(args.root.resolve(), {"dataset.data": str(args.data.resolve())} | parse_sets(args.set))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(args.root.resolve()), "demo"], check=True)
    print(f"chain on {args.data}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
