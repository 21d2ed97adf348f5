"""Training a stage under torchrun: ``launch`` starts ``nproc`` local worker processes and reads rank 0's result.

A stage whose params.yaml section asks for ``nproc`` above 1 (``needs_launch``) hands its training function's
arguments to ``launch`` as JSON; ``pipeline/cli_train.py`` is the worker torchrun starts, which turns them back
into a call of the same function (``pipeline/training.py``'s loop, which knows how to run as one rank of many).
The rendezvous and the process group listen on 127.0.0.1 only, and a failing worker is one error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import InputError, ParamsError

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A torchrun worker failed: ``str(err)`` names the stage, the exit code, the worker's own error and the
    tail of the workers' log."""


class WorkerInputError(WorkerError, InputError):
    """A torchrun worker stopped on bad input (a missing or unfitting file, a params value): the CLI reports
    it as it reports the same error of a single-process run."""


WORKER_MODULE = "pipeline.cli_train"
LOG_TAIL_LINES = 30


def _loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), for gloo and NCCL to bind to."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in ("lo", "lo0") if n in names), None)


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])


def processes(params: dict[str, Any], section: str) -> int:
    """``<section>.nproc``: how many local processes train the stage (1: this one, in-process)."""
    n = params[section].get("nproc")
    if n is None:
        raise ParamsError(f"params.yaml: {section}.nproc is missing (local training processes; 1: in-process)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParamsError(f"params.yaml: {section}.nproc: expected a whole number of processes >= 1, got {n!r}")
    return n


def needs_launch(params: dict[str, Any], section: str) -> bool:
    """More than one process asked for, and this is not already one of them."""
    return processes(params, section) > 1 and not dist.is_initialized()


def launch(kind: str, request: dict[str, Any], nproc: int, log_dir: Path, threads: int) -> dict[str, Any]:
    """Run stage ``kind``'s training under torchrun on ``nproc`` local processes; rank 0's JSON result.

    ``request`` (plain JSON types) holds the training function's arguments; ``pipeline.cli_train`` turns it
    back into a call. The rendezvous and the process group listen on 127.0.0.1 only. torchrun's and the
    workers' output goes to ``log_dir/torchrun.log``; a failing worker raises ``WorkerError`` (or
    ``WorkerInputError`` for bad input) with the exit code, its error and the log's tail, and torchrun stops
    the other workers, so a failure never hangs the stage.
    """
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ParamsError(f"params.yaml: {kind}.nproc: {nproc} processes, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s): one process per GPU")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "torchrun.log"
    with tempfile.TemporaryDirectory(prefix=f"vitforge-{kind}-torchrun-") as tmp:
        exchange = Path(tmp)
        (exchange / "request.json").write_text(json.dumps({"kind": kind, **request}))
        # ``python -m torch.distributed.run`` is torchrun from this interpreter (a venv need not be on PATH).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
               "--nproc-per-node", str(nproc), "-m", WORKER_MODULE, "--exchange", str(exchange)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        loopback = _loopback_interface()
        if loopback is not None:
            env.setdefault("GLOO_SOCKET_IFNAME", loopback)
            env.setdefault("NCCL_SOCKET_IFNAME", loopback)
        log.info("%s: training under torchrun on %d processes; their log: %s", kind, nproc, log_file)
        try:
            with open(log_file, "w") as out:
                subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
        except subprocess.CalledProcessError as err:
            raise _worker_error(kind, err.returncode, exchange / "error.json", log_file) from None
        result = exchange / "result.json"
        if not result.is_file():  # every worker exited 0, yet rank 0 wrote nothing: never a success
            raise WorkerError(f"{kind}: torchrun finished but rank 0 wrote no result; log {log_file}:\n"
                              f"{_tail(log_file)}")
        return json.loads(result.read_text())


def _worker_error(kind: str, code: int, error_file: Path, log_file: Path) -> WorkerError:
    """The first worker error (``pipeline.cli_train`` records it) on the first line, then the log's tail."""
    first = json.loads(error_file.read_text()) if error_file.is_file() else None
    if first is None:
        head = f"{kind}: a torchrun worker failed (exit code {code}) before it recorded an error"
    else:
        head = (f"{first['message']} ({kind}: torchrun rank {first['rank']} stopped on {first['type']}, "
                f"exit code {code})")
    message = f"{head}; log {log_file}, last lines:\n{_tail(log_file)}"
    return WorkerInputError(message) if first and first["input_error"] else WorkerError(message)
