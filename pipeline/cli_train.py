"""The torchrun worker of every training stage: one rank of pre-training, supernet training or fine-tuning.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m pipeline.cli_train --exchange DIR

Started by ``pipeline.launch.launch`` when a stage's ``nproc`` is above 1, not by hand: ``DIR/request.json``
holds the training function's arguments. Every rank runs the same function (DDP averages the gradients);
rank 0 writes the weights, the checkpoint and ``DIR/result.json``, which the stage reads back and logs to
MLflow itself. The first rank to fail records its error in ``DIR/error.json`` for the stage to raise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from pipeline.errors import InputError
from pipeline.training import init_distributed, is_main


def run_pretrain(r: dict[str, Any]) -> dict[str, Any]:
    from pipeline.ssl.train import pretrain

    res = pretrain(Path(r["data_dir"]), Path(r["out_dir"]), r["params"], resume=r["resume"], meta=r["meta"],
                   overrides=r["overrides"])
    return {"weights": str(res.weights), "train": res.train.summary()}


def run_supernet(r: dict[str, Any]) -> dict[str, Any]:
    from pipeline.nas.supernet_train import train_supernet

    res = train_supernet(Path(r["data_dir"]), Path(r["out_dir"]), r["params"],
                         backbone=Path(r["backbone"]) if r["backbone"] else None, resume=r["resume"],
                         meta=r["meta"], overrides=r["overrides"])
    return {"weights": str(res.weights), "train": res.train.summary(), "val_top1": res.val_top1,
            "archs": res.archs}


def run_finetune(r: dict[str, Any]) -> dict[str, Any]:
    from pipeline.finetune.train import finetune
    from pipeline.models.supernet import Arch

    res = finetune(Path(r["data_dir"]), Path(r["out_dir"]), r["params"], Path(r["supernet_weights"]),
                   Arch(**r["arch"]), resume=r["resume"], meta=r["meta"], overrides=r["overrides"],
                   train_on_val=r["train_on_val"])
    return {"weights": str(res.weights), "train": res.train.summary(),
            "val": res.val.to_dict() if res.val is not None else None, "test": res.test.to_dict(),
            "classes": res.classes}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pretrain": run_pretrain, "supernet": run_supernet, "finetune": run_finetune}


def die_with_torchrun() -> None:
    """A torchrun killed outright (SIGKILL, as ``subprocess.run`` does to it when the stage is interrupted)
    cannot stop its workers: on Linux the kernel then sends each of them SIGTERM."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # torchrun died before the call
        sys.exit("torchrun exited before this worker started")


def write_json(path: Path, obj: Any) -> None:
    """Atomic: the stage never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def record_error(exchange: Path, err: BaseException) -> None:
    """The first failing rank's error; a later one (a rank stopped because another failed) keeps out."""
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    entry = {"rank": rank, "type": type(err).__name__, "message": str(err).strip() or type(err).__name__,
             "input_error": isinstance(err, InputError)}
    try:
        fd = os.open(exchange / "error.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)


@record  # torchrun's failure summary then carries the worker's traceback
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchange", type=Path, required=True, help="folder of request.json and result.json")
    args = ap.parse_args()
    die_with_torchrun()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        init_distributed()
        request = json.loads((args.exchange / "request.json").read_text())
        reply = WORKERS[request.pop("kind")](request)
        if is_main():
            write_json(args.exchange / "result.json", reply)
    except BaseException as err:
        record_error(args.exchange, err)
        raise
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
