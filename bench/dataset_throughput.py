"""Validate a real photo set through the dataset stage and print images/s.

    python bench/dataset_throughput.py --data ../shared/datasets/hymenoptera
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.data import build_manifest, read_dataset
from pipeline.params import load_params
from pipeline.stages.dataset import run_dataset
from pipeline.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="imagefolder")
    args = ap.parse_args()

    t0 = time.perf_counter()
    raw = read_dataset(args.data, args.format)
    t_validate = time.perf_counter() - t0
    manifest = build_manifest(raw, 0.1, 0.1)
    n = len(raw.samples)
    mb = sum((args.data / s.path).stat().st_size for s in raw.samples) / 1e6
    print(f"data        {args.data}")
    print(f"images      {n} in {len(raw.classes)} classes {raw.classes}, {mb:.1f} MB")
    print(f"split       {manifest.counts()}")
    print(f"validate    {t_validate:.2f} s  ->  {n / t_validate:.0f} images/s, {mb / t_validate:.1f} MB/s, full decode")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", root / "params.yaml")
        params = load_params(root)
        t0 = time.perf_counter()
        res = run_dataset(root, params, Tracker.from_params(params, root), data=str(args.data.resolve()),
                          fmt=args.format, skip_invalid=False)
        t_stage = time.perf_counter() - t0
    print(f"stage       {t_stage:.2f} s  ->  {n / t_stage:.0f} images/s (validate, copy, dvc add + push, MLflow)")
    print(f"version     {res.version}")


if __name__ == "__main__":
    main()
