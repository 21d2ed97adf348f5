"""Version a validated dataset with DVC through its Python API (no shell).

The project is a DVC repo with a local directory remote by default, or a URL one (``dataset.dvc_remote_url:
s3://bucket/dvc`` or ``$VITFORGE_DVC_REMOTE``; ``$AWS_ENDPOINT_URL`` for an S3-compatible server), from which
``restore`` pulls a version on a machine that lacks it. The dataset stage stages the validated
copy next to the tracked folder; ``commit_version`` then swaps it in and records it in ``<folder>.dvc`` as one
recoverable step, pushes to the remote and returns the ``.dir`` md5 from the ``.dvc`` file: the dataset
version. Unchanged data gives the same md5 and adds nothing; earlier versions stay in the DVC cache and the
remote.

The commit: a journal (``.dvc/tmp/vitforge/<folder>.commit.json``, written atomically) records the old ``.dvc``
text, then the old folder is renamed aside (``<folder>.old``), the staged one renamed in, ``dvc add`` run, and
the journal marked ``added``; only then does the old folder go, the push run and the journal go. A process
killed at any point leaves the journal: ``recover`` rolls an unfinished swap back (old folder and old ``.dvc``
text restored) or an added version forward (old folder removed, push redone), under a lock that every reader
takes too. ``verified_version`` is what later stages call: it recovers, then holds the folder to the version
its ``.dvc`` file records (``dvc status``), so they see the old version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from pipeline.data.errors import DatasetError
from pipeline.errors import MissingStageError

log = logging.getLogger(__name__)


ENV_REMOTE = "VITFORGE_DVC_REMOTE"  # a remote URL (s3://bucket/dvc) that replaces params.yaml's dvc_remote_url
ENV_ENDPOINT = "AWS_ENDPOINT_URL"  # an S3-compatible server (MinIO, moto) for an s3:// remote
# A remote URL that the stages' ``resolve`` joined to the project root as if it were a folder ("/root/s3:/b/x").
_JOINED_URL = re.compile(r"(?:^|/)(?P<scheme>s3|gs|azure|oss|ssh|http|https|webdav|hdfs):/+(?P<rest>[^/].*)$")


def remote_location(remote_url: Path | str) -> str:
    """The remote DVC pushes to and pulls from: $VITFORGE_DVC_REMOTE, else ``remote_url``, a folder or a URL."""
    env = os.environ.get(ENV_REMOTE)
    if env:
        return env
    match = _JOINED_URL.search(str(remote_url))
    return f"{match['scheme']}://{match['rest']}" if match else str(remote_url)


def is_url(location: str) -> bool:
    return "://" in location


def open_repo(root: Path, remote_name: str, remote_url: Path | str):
    """The DVC repo at ``root`` (created if missing), with ``remote_name`` as the default remote: a local folder,
    or a URL (``s3://bucket/path``; ``$AWS_ENDPOINT_URL`` goes to the machine's own ``.dvc/config.local``)."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # dvc's hints go to stdout otherwise
    if not (root / ".dvc").is_dir():
        log.info("initialising a DVC repo at %s", root)
        Repo.init(str(root), no_scm=not (root / ".git").exists())
    repo = Repo(str(root))
    location = remote_location(remote_url)
    remote = repo.config.get("remote", {}).get(remote_name, {})
    current = remote.get("url")
    if is_url(location):
        endpoint = os.environ.get(ENV_ENDPOINT) if location.startswith("s3://") else None
        if current != location or repo.config.get("core", {}).get("remote") != remote_name:
            with repo.config.edit() as conf:
                conf["remote"][remote_name] = {"url": location}
                conf["core"]["remote"] = remote_name
            repo = Repo(str(root))
        if endpoint and remote.get("endpointurl") != endpoint:
            with repo.config.edit("local") as conf:
                conf["remote"][remote_name] = {"endpointurl": endpoint}
            repo = Repo(str(root))
        return repo
    folder = Path(location)
    if current is None or is_url(current) or Path(current).resolve() != folder.resolve():
        # dvc, like `dvc remote add`, reads a relative url against the current directory and stores it
        # relative to .dvc/, so the committed config works in any clone.
        with repo.config.edit() as conf:
            conf["remote"][remote_name] = {"url": os.path.relpath(folder.resolve())}
            conf["core"]["remote"] = remote_name
        repo = Repo(str(root))
    folder.mkdir(parents=True, exist_ok=True)
    return repo


def replace_dir(staged: Path, target: Path) -> None:
    """Swap ``staged`` in at ``target``; the old folder goes only after the new one is in place.

    Not a commit: the ``.dvc`` file is not part of it. The dataset stage uses ``commit_version``."""
    old = aside(target, "old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)


def dvc_add_and_push(root: Path, target: Path, remote_name: str, remote_url: Path | str) -> str:
    """``dvc add`` + ``dvc push`` of ``target``; return its md5 (the data version)."""
    repo = open_repo(root, remote_name, remote_url)
    _add(repo, target)
    _push(repo, target, remote_name)
    return read_version(target)


def _add(repo, target: Path) -> None:
    # Absolute targets: dvc resolves relative ones against the current directory, not the repo.
    repo.add(str(target.resolve()))


def _push(repo, target: Path, remote_name: str) -> None:
    pushed = repo.push(targets=[str(target.resolve())], remote=remote_name)
    log.info("dvc push %s: %s object(s) sent", target, pushed)


# ---- the commit ---------------------------------------------------------------------------------

# What ``commit_version`` has done when ``on_step`` is called with each name, in order.
COMMIT_STEPS = ("journal", "old_aside", "new_in", "added", "old_removed", "pushed")


def on_step(name: str) -> None:
    """Called after each step of a commit (a no-op; the crash tests kill the process here)."""


def aside(target: Path, what: str) -> Path:
    """``<target>.staged`` (the new version being copied) or ``<target>.old`` (the one being replaced)."""
    return target.with_name(f"{target.name}.{what}")


def dvc_file(target: Path) -> Path:
    return target.with_name(target.name + ".dvc")


def _dvc_root(target: Path) -> Path | None:
    for folder in [target.resolve().parent, *target.resolve().parent.parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _state_dir(target: Path) -> Path | None:
    root = _dvc_root(target)
    if root is None:
        return None
    rel = target.resolve().relative_to(root).as_posix().replace("/", "__")
    return root / ".dvc" / "tmp" / "vitforge" / rel


def journal_path(target: Path) -> Path | None:
    state = _state_dir(target)
    return None if state is None else state.with_name(state.name + ".commit.json")


@contextlib.contextmanager
def commit_lock(target: Path) -> Iterator[None]:
    """An exclusive flock held while a version is committed, recovered or checked; nothing without a DVC repo."""
    state = _state_dir(target)
    if state is None:
        yield
        return
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state.with_name(state.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_journal(target: Path) -> dict | None:
    path = journal_path(target)
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DatasetError(path, "the journal of an interrupted dataset commit is unreadable; restore "
                           f"{target} with `dvc checkout` and delete the journal") from None


def commit_version(root: Path, staged: Path, target: Path, remote_name: str, remote_url: Path | str
                   ) -> str:
    """Swap ``staged`` in at ``target``, ``dvc add`` it and push: one recoverable step; return the version.

    An exception (Ctrl-C included) before the version is added rolls back at once; a SIGKILL leaves the
    journal, which the next ``recover`` (every dataset run, every ``verified_version``) acts on."""
    repo = open_repo(root, remote_name, remote_url)
    with commit_lock(target):
        recover(target, push=lambda: _push(repo, target, remote_name))  # an earlier interrupted commit first
        if aside(target, "old").exists():  # no journal: a leftover of a commit made before journals
            shutil.rmtree(aside(target, "old"))
        pointer = dvc_file(target)
        journal = {"phase": "swap", "had_old": target.exists(),
                   "old_dvc": pointer.read_text(encoding="utf-8") if pointer.is_file() else None}
        jpath = journal_path(target)
        assert jpath is not None  # open_repo made the DVC repo
        jpath.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(jpath, json.dumps(journal))
        try:
            on_step("journal")
            if journal["had_old"]:
                target.rename(aside(target, "old"))
                on_step("old_aside")
            staged.rename(target)
            _fsync_dir(target.parent)
            on_step("new_in")
            _add(repo, target)
            version = read_version(target)
            _write_atomic(jpath, json.dumps({**journal, "phase": "added", "version": version}))
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the journal stays for the next run otherwise
                _roll_back(target, journal)
                jpath.unlink()
            raise
        on_step("added")
        shutil.rmtree(aside(target, "old"), ignore_errors=True)
        on_step("old_removed")
        _push(repo, target, remote_name)  # a failure here leaves the journal: the next run pushes again
        on_step("pushed")
        jpath.unlink()
    return version


def recover_interrupted(root: Path, target: Path, remote_name: str, remote_url: Path | str) -> str | None:
    """What the dataset stage does first: finish or undo an interrupted commit, push included."""
    jpath = journal_path(target)
    if jpath is None or not jpath.is_file():
        return None
    repo = open_repo(root, remote_name, remote_url)
    with commit_lock(target):
        return recover(target, push=lambda: _push(repo, target, remote_name))


def recover(target: Path, *, push: Callable[[], None] | None = None) -> str | None:
    """Finish or undo a commit that was interrupted: "back" (rolled back), "forward", or None (nothing to do).

    Call under ``commit_lock``. ``push``: redo the push of a rolled-forward version (the dataset stage);
    without it (readers) the journal stays until the next dataset run pushes."""
    journal = _read_journal(target)
    if journal is None:
        return None
    jpath = journal_path(target)
    if journal["phase"] == "added":  # the new folder and its .dvc are both in place: finish
        shutil.rmtree(aside(target, "old"), ignore_errors=True)
        if push is not None:
            push()
            jpath.unlink()
        log.warning("%s: finished an interrupted commit of version %s", target, journal.get("version"))
        return "forward"
    _roll_back(target, journal)
    jpath.unlink()
    log.warning("%s: rolled back an interrupted commit; the previous version is in place", target)
    return "back"


def _roll_back(target: Path, journal: dict) -> None:
    """Old folder and old ``.dvc`` text back in place; safe to repeat after a kill at any point of it."""
    old = aside(target, "old")
    if old.exists():  # the old folder was moved aside: whatever sits at target is the new one
        if target.exists():
            shutil.rmtree(target)
        old.rename(target)
    elif not journal["had_old"] and target.exists():
        shutil.rmtree(target)  # there was no folder before (the first version): the new one goes
    pointer = dvc_file(target)
    if journal["old_dvc"] is None:
        pointer.unlink(missing_ok=True)
    elif not pointer.is_file() or pointer.read_text(encoding="utf-8") != journal["old_dvc"]:
        _write_atomic(pointer, journal["old_dvc"])
    _fsync_dir(target.parent)


def verified_version(target: Path) -> str:
    """The version ``<target>.dvc`` records, after recovering an interrupted commit and checking (``dvc
    status``) that the folder holds exactly that version; a mismatch is a one-line DatasetError."""
    pointer = dvc_file(target)
    with commit_lock(target):
        recover(target)
        if not pointer.is_file():
            raise MissingStageError(f"{pointer}: no dataset version yet; run `vitforge stage dataset` first")
        version = read_version(target)
        differs = _status(target)
    if differs:
        raise DatasetError(target, f"does not hold the version {pointer.name} records ({version}): {differs}; run "
                           f"`vitforge stage dataset` again, or `dvc checkout {pointer}` to restore it")
    return version


def _status(target: Path) -> str:
    """What ``dvc status`` says differs between ``target`` and its ``.dvc`` file; "" when nothing does."""
    from dvc.repo import Repo

    root = _dvc_root(target)
    if root is None:
        return "not inside a DVC repo"
    logging.getLogger("dvc").setLevel(logging.WARNING)
    with Repo(str(root)) as repo:
        status = repo.status(targets=[str(target.resolve())])
    parts = []
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict):
                for changes in entry.values():
                    parts += [f"{path} {what}" for path, what in changes.items()] if isinstance(changes, dict) \
                        else [str(changes)]
            else:
                parts.append(str(entry))
    return ", ".join(parts)


def read_version(target: Path) -> str:
    """The md5 recorded in ``<target>.dvc``."""
    pointer = dvc_file(target)
    try:
        return yaml.safe_load(pointer.read_text(encoding="utf-8"))["outs"][0]["md5"]
    except FileNotFoundError:
        raise MissingStageError(f"{pointer}: no dataset version yet; run `vitforge stage dataset` first") from None
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise DatasetError(pointer, "not a DVC file with one output and its md5") from None


def restore(root: Path, target: Path, remote_name: str, remote_url: Path | str) -> bool:
    """Bring ``target`` to the version its ``.dvc`` file records, pulling from the remote what the local cache
    lacks (a run on a machine other than the one that made the version). True when anything was restored."""
    repo = open_repo(root, remote_name, remote_url)
    with commit_lock(target):
        recover(target)
        if target.exists() and not _status(target):
            return False
        stats = repo.pull(targets=[str(target.resolve())], remote=remote_name, force=True)
        differs = _status(target)
    if differs:
        raise DatasetError(target, f"still differs from {dvc_file(target).name} after `dvc pull` from "
                           f"{remote_location(remote_url)}: {differs}")
    log.info("restored %s (version %s) from %s: %s", target, read_version(target), remote_location(remote_url),
             stats)
    return True


def checkout(root: Path, target: Path) -> None:
    """Restore ``target`` from the DVC cache (as ``dvc checkout`` does)."""
    from dvc.repo import Repo

    Repo(str(root)).checkout(targets=[str(target.resolve())], force=True)
