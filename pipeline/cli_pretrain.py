"""MAE pre-training from the command line, alone or under torchrun (DDP: NCCL on CUDA, gloo on CPU).

    python -m pipeline.cli_pretrain --data data/dataset --out runs/pretrain [--resume]
    torchrun --nproc_per_node 2 -m pipeline.cli_pretrain --data data/dataset --out runs/pretrain

Rank 0 alone logs, checkpoints and reports. Started alone with ``pretrain.nproc`` above 1, it starts
torchrun itself (``pipeline/cli_train.py``). ``vitforge stage pretrain`` is the same work with its MLflow
run, for DVC and the demo.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch.distributed as dist

from pipeline.nas.space_fit import resolve_space
from pipeline.params import load_params, project_root
from pipeline.ssl.train import pretrain
from pipeline.training import init_distributed, is_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--root", type=Path, default=None, help="folder of params.yaml")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    init_distributed()
    params = load_params(args.root)
    # Rank 0 fits an `auto` space (it measures latency) and every rank trains that one space.
    fitted = [resolve_space(params, args.root or project_root(), args.data).space if is_main() else None]
    if dist.is_initialized():
        dist.broadcast_object_list(fitted, src=0)
    params = {**params, "space": fitted[0]}
    res = pretrain(args.data, args.out, params, resume=args.resume, overrides={"max_steps": args.max_steps})
    if is_main():
        print(f"steps {res.train.steps} loss {res.train.history[-1]:.4f} weights {res.weights}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
