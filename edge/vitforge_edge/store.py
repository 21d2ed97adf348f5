"""The state directory of a device: installed versions and an atomically switched ``current`` link.

Layout::

    STATE/versions/<version>/   one complete, verified package per version (never edited in place)
    STATE/current               symlink -> versions/<version>: what serves
    STATE/previous              symlink -> the version served before (local rollback)
    STATE/tmp/                  downloads in progress (same file system, so renames are atomic)

Every change is write-then-rename: a package is downloaded into ``tmp/``, fsynced, renamed into
``versions/``, and only then is a new ``current`` link created beside the old one and renamed over it
(``rename(2)`` replaces a link atomically). A process killed at any point leaves ``current`` pointing at
a complete version; leftovers in ``tmp/`` are removed on the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.tmp = self.root / "tmp"
        self.versions.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # downloads a killed process left half done
        self.tmp.mkdir()
        for stale in self.root.glob(".*.link-*"):  # a link created but never renamed into place
            stale.unlink(missing_ok=True)

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
        """Serve the previous version again; returns it."""
        prev = self.previous()
        if prev is None:
            raise FileNotFoundError(f"{self.root}: no previous version to roll back to")
        self.activate(prev)
        return prev

    def prune(self, keep: int = 3) -> None:
        """Delete installed versions beyond the newest ``keep``, never current or previous."""
        pinned = {self.current(), self.previous()}
        old = sorted((d for d in self.versions.iterdir() if d.name not in pinned), key=lambda d: d.stat().st_mtime)
        for d in old[: max(len(old) - keep, 0)]:
            shutil.rmtree(d, ignore_errors=True)
