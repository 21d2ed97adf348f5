"""The state directory of a device: installed versions and an atomically switched ``current`` link.

Layout::

    STATE/versions/<version>/   one complete, verified package per version (never edited in place)
    STATE/current               symlink -> versions/<version>: what serves
    STATE/previous              symlink -> the version served before (local rollback)
    STATE/tmp/                  downloads in progress (same file system, so renames are atomic)
    STATE/engines/              TensorRT engines built here, keyed by ONNX, precision, TensorRT version, GPU
    STATE/rejected.json         versions this device will not install (failed its checks, or rolled back)

Every change is write-then-rename: a package is downloaded into ``tmp/``, fsynced, renamed into
``versions/``, and only then is a new ``current`` link created beside the old one and renamed over it
(``rename(2)`` replaces a link atomically). A process killed at any point leaves ``current`` pointing at
a complete version; leftovers in ``tmp/`` are removed by the next writer. Writers take ``writer.lock``
(flock) first; ``serve`` and ``status`` only read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


class Store:
    """One device's state dir. Writers (the agent's poll, a local rollback) hold ``lock()``; ``serve`` and
    ``status`` only read."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.tmp = self.root / "tmp"
        self.versions.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.engines = self.root / "engines"
        self.rejected_file = self.root / "rejected.json"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The writer's lock (blocking), and the recovery of what a killed writer left: half-done
        downloads in ``tmp/`` and links never renamed into place."""
        import fcntl

        with open(self.root / "writer.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            for leftover in self.tmp.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
            for stale in self.root.glob(".*.link-*"):
                stale.unlink(missing_ok=True)
            yield

    def rejected(self) -> set[str]:
        try:
            return set(json.loads(self.rejected_file.read_text()))
        except (OSError, ValueError):
            return set()

    def reject(self, version: str) -> None:
        """Never install ``version`` here again (the agent skips it)."""
        tmp = self.rejected_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.rejected() | {version})))
        os.replace(tmp, self.rejected_file)

    def staging(self) -> Path:
        """A fresh folder to download into."""
        return Path(tempfile.mkdtemp(dir=self.tmp))

    def install(self, version: str, folder: Path) -> Path:
        """Move a downloaded, verified ``folder`` into ``versions/<version>`` (fsynced, atomic)."""
        dest = self.versions / version
        fsync_tree(folder)
        if dest.exists():  # the same version again: keep the installed copy
            shutil.rmtree(folder)
            return dest
        os.rename(folder, dest)
        _fsync_dir(self.versions)
        return dest

    def _link(self, name: str, version: str) -> None:
        link = self.root / name
        tmp = self.root / f".{name}.link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, link)
        _fsync_dir(self.root)

    def activate(self, version: str) -> None:
        """Serve ``version`` (installed); the version served until now becomes ``previous``."""
        if not (self.versions / version).is_dir():
            raise FileNotFoundError(f"version {version} is not installed in {self.versions}")
        current = self.current()
        if current == version:
            return
        if current is not None:
            self._link("previous", current)
        self._link("current", version)

    def _target(self, name: str) -> str | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name

    def current(self) -> str | None:
        return self._target("current")

    def previous(self) -> str | None:
        return self._target("previous")

    def current_dir(self) -> Path | None:
        version = self.current()
        return None if version is None else self.versions / version

    def rollback(self) -> str:
        """Serve the previous version again and reject the one it replaces here, so that the agent does not
        install it again at its next poll; returns the version now serving."""
        prev, left = self.previous(), self.current()
        if prev is None:
            raise FileNotFoundError(f"{self.root}: no previous version to roll back to")
        if left is not None:
            self.reject(left)
        self.activate(prev)
        return prev

    def prune(self, keep: int = 3) -> None:
        """Delete installed versions beyond the newest ``keep``, never current or previous."""
        pinned = {self.current(), self.previous()}
        old = sorted((d for d in self.versions.iterdir() if d.name not in pinned), key=lambda d: d.stat().st_mtime)
        for d in old[: max(len(old) - keep, 0)]:
            doomed = Path(tempfile.mkdtemp(dir=self.tmp)) / d.name
            os.rename(d, doomed)  # out of versions/ first: a kill mid-delete never leaves half a version there
            shutil.rmtree(doomed.parent, ignore_errors=True)
