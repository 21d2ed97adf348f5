"""Object storage for the run folders: files by their path relative to the project root, in one S3 bucket.

A scaled-out deployment runs each Dagster run on a machine of its own (one pod per run), so the weights,
checkpoints, result JSONs and package folders one run writes under the project root must reach the next run
through the bucket. A file is stored once per content, at ``<prefix>/files/<relative path>@<sha256>``: a
later run of the same stage never overwrites what an earlier output still names, and every download is held
to the sha256 its output recorded.

``$VITFORGE_BUCKET`` (``s3://bucket/prefix``) names the place; ``$AWS_ENDPOINT_URL`` an S3-compatible server
(MinIO, moto) in place of AWS; credentials come the usual boto3 way (``$AWS_ACCESS_KEY_ID`` and
``$AWS_SECRET_ACCESS_KEY``, a profile, or the pod's role).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

log = logging.getLogger(__name__)

ENV_BUCKET = "VITFORGE_BUCKET"
ENV_ENDPOINT = "AWS_ENDPOINT_URL"


class StorageError(RuntimeError):
    """An object that is missing from the bucket or does not match the sha256 its output recorded."""


@dataclass(frozen=True)
class FileRef:
    rel: str  # POSIX path relative to the project root
    sha256: str
    size: int

    @property
    def key(self) -> str:
        """Where the content lies below the store's prefix."""
        return f"files/{self.rel}@{self.sha256}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def relative(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` as a POSIX string, or None when it lies outside it."""
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return None if rel == "." else rel


@dataclass(frozen=True)
class ObjectStore:
    """One bucket and prefix (``s3://bucket/prefix``); ``endpoint_url`` for an S3-compatible server."""

    url: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{self.url!r}: expected an s3://bucket/prefix URL (${ENV_BUCKET})")

    @classmethod
    def from_env(cls) -> ObjectStore:
        url = os.environ.get(ENV_BUCKET)
        if not url:
            raise ValueError(f"${ENV_BUCKET} is not set: expected s3://bucket/prefix")
        return cls(url, os.environ.get(ENV_ENDPOINT) or None)

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    @property
    def prefix(self) -> str:
        return urlparse(self.url).path.strip("/")

    def key(self, name: str) -> str:
        return str(PurePosixPath(self.prefix, name)) if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    @cached_property
    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url or os.environ.get(ENV_ENDPOINT) or None)

    # ---- objects ------------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put_bytes(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)

    def get_bytes(self, name: str) -> bytes:
        """The object's bytes; a missing one is a StorageError naming it (any other error is raised as is)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise StorageError(f"{self.uri(name)}: no such object") from None
            raise

    def list(self, under: str = "") -> list[str]:
        """Every object name below ``under`` (relative to the prefix), sorted."""
        start = self.key(under) if under else (self.prefix + "/" if self.prefix else "")
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                names.append(key[len(self.prefix) + 1:] if self.prefix else key)
        return sorted(names)

    # ---- files by their path under the project root -----------------------------------------------

    def upload(self, root: Path, rel: str) -> FileRef:
        """``root/rel`` into the bucket (skipped when that content is there already); returns its reference."""
        path = root / rel
        ref = FileRef(rel, sha256_file(path), path.stat().st_size)
        if not self.exists(ref.key):
            self.client.upload_file(str(path), self.bucket, self.key(ref.key))
            log.info("uploaded %s (%d bytes) to %s", rel, ref.size, self.uri(ref.key))
        return ref

    def download(self, root: Path, ref: FileRef) -> bool:
        """Make ``root/ref.rel`` hold the content ``ref`` names: nothing when it does already, else fetched
        (to a temporary name, checked against the sha256, then renamed in). True when it was fetched."""
        path = root / ref.rel
        if path.is_file() and sha256_file(path) == ref.sha256:
            return False
        if not self.exists(ref.key):
            raise StorageError(f"{self.uri(ref.key)}: missing from the bucket, so {ref.rel} cannot be restored; "
                               "materialize the asset that made it again")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.download")
        self.client.download_file(self.bucket, self.key(ref.key), str(tmp))
        got = sha256_file(tmp)
        if got != ref.sha256:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"{self.uri(ref.key)}: sha256 {got}, but its output recorded {ref.sha256}")
        os.replace(tmp, path)
        log.info("downloaded %s from %s", ref.rel, self.uri(ref.key))
        return True


def files_under(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else every file below it (sorted); nothing when it is absent."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return []
