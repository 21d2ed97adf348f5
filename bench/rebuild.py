"""Rebuild the demo's registered model from what it records, and print the wall time and the match table.

    vitforge demo && python bench/rebuild.py                # the model the demo registered in this checkout
    python bench/rebuild.py --fresh                         # a clone of HEAD: `vitforge demo` there, then rebuild

The rebuild (pipeline/rebuild.py) checks out the version's commit in a git worktree, restores its DVC dataset
version, re-runs the chain with the recorded step totals and latency measurements, and compares the sha256 of
the weights' tensors, the ONNX file and the label map. The version must come from a clean commit: `--fresh`
gives one (a clone of HEAD, with the committed code only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.stages.common import model_name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=PACKAGE_ROOT, help="the project the demo ran in")
    ap.add_argument("--ref", help="MODEL@VERSION or MODEL@ALIAS (default: the demo target's candidate)")
    ap.add_argument("--fresh", action="store_true", help="clone HEAD to a temporary folder and run the demo there")
    args = ap.parse_args()
    root = args.root.resolve()
    env = dict(os.environ)
    demo_s = None
    if args.fresh:
        root = Path(tempfile.mkdtemp(prefix="vitforge-bench-rebuild-")) / "clone"
        subprocess.run(["git", "clone", "-q", str(PACKAGE_ROOT), str(root)], check=True)
        env["PYTHONPATH"] = str(root)  # the clone's code, as a rebuild of its commit runs it
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(root), "demo"], cwd=root, env=env,
                       check=True)
        demo_s = time.perf_counter() - t0
    params = load_params(root)
    ref = args.ref or f"{model_name(root, params)}@candidate-{params['demo']['target']}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(root), "rebuild", ref], cwd=root,
                          env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    table = proc.stdout[proc.stdout.find("== rebuild of"):] if "== rebuild of" in proc.stdout else proc.stdout
    print(table.rstrip())
    if proc.returncode not in (0, 1):
        print(proc.stderr[-3000:], file=sys.stderr)
    print(f"\nrebuild wall time {wall:.0f} s" + (f" (the demo it rebuilt took {demo_s:.0f} s)" if demo_s else "")
          + f"; exit {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
