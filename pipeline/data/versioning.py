"""Version a validated dataset with DVC through its Python API (no shell).

The project is a DVC repo with a local directory remote by default. ``version``
stages the validated copy next to the tracked folder, swaps it in only when it is
complete, ``dvc add``s it, pushes to the remote and returns the ``.dir`` md5 from
the ``.dvc`` file: the dataset version. Unchanged data gives the same md5 and
adds nothing; earlier versions stay in the DVC cache and the remote.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def open_repo(root: Path, remote_name: str, remote_url: Path):
    """The DVC repo at ``root`` (created if missing), with ``remote_name`` as the default remote."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # dvc's hints go to stdout otherwise
    if not (root / ".dvc").is_dir():
        log.info("initialising a DVC repo at %s", root)
        Repo.init(str(root), no_scm=not (root / ".git").exists())
    repo = Repo(str(root))
    current = repo.config.get("remote", {}).get(remote_name, {}).get("url")
    if current is None or Path(current).resolve() != remote_url.resolve():
        # dvc, like `dvc remote add`, reads a relative url against the current directory and stores it
        # relative to .dvc/, so the committed config works in any clone.
        with repo.config.edit() as conf:
            conf["remote"][remote_name] = {"url": os.path.relpath(remote_url.resolve())}
            conf["core"]["remote"] = remote_name
        repo = Repo(str(root))
    remote_url.mkdir(parents=True, exist_ok=True)
    return repo


def replace_dir(staged: Path, target: Path) -> None:
    """Swap ``staged`` in at ``target``; the old folder goes only after the new one is in place."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)


def dvc_add_and_push(root: Path, target: Path, remote_name: str, remote_url: Path) -> str:
    """``dvc add`` + ``dvc push`` of ``target``; return its md5 (the data version)."""
    repo = open_repo(root, remote_name, remote_url)
    # Absolute targets: dvc resolves relative ones against the current directory, not the repo.
    repo.add(str(target.resolve()))
    pushed = repo.push(targets=[str(target.resolve())], remote=remote_name)
    log.info("dvc push %s: %s object(s) sent", target, pushed)
    return read_version(target)


def read_version(target: Path) -> str:
    """The md5 recorded in ``<target>.dvc``."""
    dvc_file = target.with_name(target.name + ".dvc")
    outs = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["outs"]
    return outs[0]["md5"]


def checkout(root: Path, target: Path) -> None:
    """Restore ``target`` from the DVC cache (as ``dvc checkout`` does)."""
    from dvc.repo import Repo

    Repo(str(root)).checkout(targets=[str(target.resolve())], force=True)
