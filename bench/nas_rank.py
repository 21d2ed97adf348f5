"""How well does weight-sharing (inherited) accuracy rank subnets? Kendall tau against fine-tuning.

Takes ``--archs`` subnets spread evenly over the space by FLOPs, scores each by the supernet's
inherited val top-1, fine-tunes each for the same ``--steps`` (the stage's recipe) and scores it
again on val; prints both, their standard errors and Kendall's tau. Reads a project root after
`vitforge demo` (or the supernet stage).

    python bench/nas_rank.py --root /tmp/demo [--archs 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.data.tensors import load_split, normalize
from pipeline.finetune.train import finetune
from pipeline.models.supernet import arch_flops
from pipeline.nas.search import kendall_tau
from pipeline.nas.supernet_train import evaluate, load_supernet
from pipeline.params import load_params
from pipeline.paths import paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--archs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps per arch")
    args = ap.parse_args()
    root = args.root.resolve()
    params = load_params(root)
    weights = paths(root, params).supernet()
    data = paths(root, params).dataset()
    net, _ = load_supernet(weights)
    space = net.space
    by_cost = sorted(space.all_archs(), key=lambda a: arch_flops(a, space))
    picks = [by_cost[round(i * (len(by_cost) - 1) / (args.archs - 1))] for i in range(args.archs)]
    images, y_val = load_split(data, "val", space.largest().img_size)
    x_val = normalize(images, params["model"]["mean"], params["model"]["std"])
    rows = []
    for arch in picks:
        inherited = evaluate(net, arch, x_val, y_val)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = finetune(data, Path(tmp), params, weights, arch, overrides={"max_steps": args.steps},
                           train_on_val=False)
        rows.append((arch, inherited, res.val.top1, time.perf_counter() - t0))
        print(f"{arch.short():<24} {arch_flops(arch, space) / 1e6:>8.2f} MFLOPs  inherited {inherited:.4f}  "
              f"fine-tuned {res.val.top1:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    n = len(y_val)
    se = [math.sqrt(max(p * (1 - p), 0) / n) for _, p, _, _ in rows]
    tau = kendall_tau([r[1] for r in rows], [r[2] for r in rows])
    print(f"\n{len(rows)} archs, val split of {n} images (standard error up to {max(se):.4f}); "
          f"fine-tuned {args.steps} steps each")
    print(f"Kendall tau, inherited vs fine-tuned val top-1: {'n/a' if tau is None else f'{tau:.2f}'} (goal >= 0.6)")


if __name__ == "__main__":
    main()
