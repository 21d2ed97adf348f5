"""The prod IO manager: asset values in the bucket, and with them every file they name under the project root.

Under one pod per run, the run that trains the supernet and the run that searches a target share no disk.
An asset's value is a dict that names files by path (weights, package folders, the dataset folder; relative
to the project root, as every stage records them), so storing the dict alone would hand the next run paths to
nothing. ``ProjectFilesIOManager``, on output:

- uploads every file the value names inside the project root (a folder: every file below it), plus the run
  folder of the stage (checkpoints, result JSONs: ``RUN_FILES``), each once per content (pipeline/storage.py);
- for a path inside a DVC-tracked folder (the dataset), uploads only the ``.dvc`` pointer: DVC pushed the data
  to its own remote;
- stores the value as JSON with the root it was made under and the sha256 of every file.

On input it downloads each file that is missing locally or differs (checked against the sha256), restores a
DVC-tracked folder from the DVC remote (``dvc pull``), and returns the value (an absolute path under the
producing run's root, as values stored before paths were relative hold, moved under this run's), so the asset
functions need no change between local and prod.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext

from assets.resources import ProjectResource
from pipeline.data.versioning import dvc_file, restore
from pipeline.params import resolve
from pipeline.paths import Paths, paths
from pipeline.storage import FileRef, ObjectStore, files_under, relative

FORMAT = 1  # of the stored value

# What a stage writes besides the files its value names: its checkpoints and result JSONs (by asset name;
# the partition is the target). A later `--resume` or `vitforge stage` on another machine finds them too.
RUN_FILES: dict[str, Callable[[Paths, str | None], list[Path]]] = {
    "pretrained_backbone": lambda p, _: [p.pretrain_dir()],
    "supernet": lambda p, _: [p.supernet_dir()],
    "architecture": lambda p, target: [p.latency_model(target), p.search_result(target)],
    "model": lambda p, target: [p.finetune_dir(target)],
    "edge_package": lambda p, target: [p.package_dir(target)],
}


def named_paths(value: Any, root: Path) -> Iterator[Path]:
    """Every string in ``value`` (nested dicts and lists) that names a path: an absolute one, or a relative one
    with a folder in it (``runs/supernet/supernet.safetensors``; a bare word is a class or target name) that
    exists under ``root``."""
    if isinstance(value, dict):
        for v in value.values():
            yield from named_paths(v, root)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from named_paths(v, root)
    elif isinstance(value, str) and value.startswith("/"):
        yield Path(value)
    elif isinstance(value, str) and "/" in value and "://" not in value and (root / value).exists():
        yield root / value


def rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every path under the root ``old`` moved under ``new``."""
    if isinstance(value, dict):
        return {k: rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rebase(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def dvc_tracked(path: Path, root: Path) -> Path | None:
    """The DVC-tracked folder (a ``<folder>.dvc`` beside it) that holds ``path``, if any, inside ``root``."""
    for folder in [path, *path.parents]:
        if folder == root or relative(folder, root) is None:
            return None
        if dvc_file(folder).is_file():
            return folder
    return None


class ProjectFilesIOManager(ConfigurableIOManager):
    """Asset values and the project files they name, in ``bucket`` (``s3://bucket/prefix``)."""

    project: ProjectResource
    bucket: str
    endpoint_url: str | None = None  # an S3-compatible server; default: $AWS_ENDPOINT_URL, else AWS

    def _store(self) -> ObjectStore:
        return ObjectStore(self.bucket, self.endpoint_url)

    @staticmethod
    def _name(context: InputContext | OutputContext) -> str:
        key = "/".join(context.asset_key.path)
        part = context.asset_partition_key if context.has_asset_partitions else "__unpartitioned__"
        return f"dagster/{key}/{part}.json"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        root = self.project.path
        store = self._store()
        asset = context.asset_key.path[-1]
        partition = context.asset_partition_key if context.has_asset_partitions else None
        candidates = [p.resolve() for p in named_paths(obj, root)]
        if asset in RUN_FILES:
            candidates += [f.resolve() for f in RUN_FILES[asset](paths(root, self.project.params()), partition)]
        files: set[str] = set()
        tracked: set[str] = set()
        for path in candidates:
            if relative(path, root) is None:
                continue  # outside the project (a source folder, an MLflow URI): not this run's to carry
            folder = dvc_tracked(path, root)
            if folder is not None:
                tracked.add(relative(folder, root))
                files.add(relative(dvc_file(folder), root))
                continue
            files.update(relative(f, root) for f in files_under(path) if not f.name.endswith(".download"))
        refs = [store.upload(root, rel) for rel in sorted(files)]
        name = self._name(context)
        store.put_bytes(name, json.dumps({
            "format": FORMAT, "root": str(root), "run_id": context.run_id, "value": obj,
            "files": [{"rel": r.rel, "sha256": r.sha256, "size": r.size} for r in refs],
            "dvc": sorted(tracked)}, indent=1).encode())
        context.add_output_metadata({"stored_at": store.uri(name), "files_in_bucket": len(refs),
                                     "bytes_in_bucket": sum(r.size for r in refs)})

    def load_input(self, context: InputContext) -> Any:
        root = self.project.path
        store = self._store()
        name = self._name(context)
        stored = json.loads(store.get_bytes(name))
        if stored.get("format") != FORMAT:
            raise ValueError(f"{store.uri(name)}: stored in format {stored.get('format')}, expected {FORMAT}")
        fetched = [ref.rel for ref in (FileRef(**f) for f in stored["files"]) if store.download(root, ref)]
        p = self.project.params()["dataset"]
        restored = [rel for rel in stored["dvc"]
                    if restore(root, root / rel, p["dvc_remote_name"], resolve(p["dvc_remote_url"], root))]
        if fetched or restored:
            context.log.info(f"{'/'.join(context.asset_key.path)}: fetched {fetched} from {store.uri('files')}, "
                             f"restored {restored} from the DVC remote")
        return rebase(stored["value"], stored["root"], str(root))
