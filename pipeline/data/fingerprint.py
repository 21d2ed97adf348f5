"""Fingerprints of a source data folder, for the sensor that retrains when the data changes.

``content_hash`` (sha256 over every file's relative path and bytes, in path order) is what decides: the
dataset stage records it as ``source_hash`` with each version, and a folder whose hash differs from the
last version's has new data. ``stat_fingerprint`` (paths, sizes, mtimes) is cheap and only says whether
the content needs hashing again. Hidden files and folders (``.DS_Store``, ``.git``) are left out of both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def data_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def stat_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in data_files(folder):
        st = p.stat()
        h.update(f"{p.relative_to(folder).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in data_files(folder):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()
