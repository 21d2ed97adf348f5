"""Where each stage's files live, defined once.

The CLI, the Dagster assets, the stages, ``bench/`` and the test that holds ``dvc.yaml`` to the same paths all
ask here. A folder comes from params.yaml (an ``out_dir``, relative to the project root); the file names inside
it are fixed here. ``rel`` gives the form a stage records: relative to the root, so a copied project points
at its own files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import resolve

BACKBONE = "backbone.safetensors"  # MAE encoder (pretrain)
SUPERNET = "supernet.safetensors"  # weight-sharing supernet
MODEL = "model.safetensors"  # the fine-tuned subnet of a target
RESULT = "result.json"  # what a stage returns, as the next stage and bench/ read it


@dataclass(frozen=True)
class Paths:
    root: Path
    params: dict[str, Any]

    def _dir(self, section: str, key: str = "out_dir") -> Path:
        return resolve(self.params[section][key], self.root)

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the project root when it lies inside it (as a stage records it)."""
        p = Path(path)
        # lexically first: a folder under the root that is a symlink elsewhere (``runs -> /scratch/runs``, DVC's
        # symlinked cache) is still recorded under the root, so a copy of the project reads its own
        root = Path(os.path.normpath(self.root.absolute()))
        for candidate, base in ((Path(os.path.normpath(root / p)), root), (p.resolve(), self.root.resolve())):
            if candidate.is_relative_to(base):
                return candidate.relative_to(base).as_posix()
        return str(p)

    def dataset(self) -> Path:
        return self._dir("dataset", "tracked_dir")

    def dataset_version_file(self) -> Path:
        """The dataset stage's version record: what dvc.yaml's later stages depend on."""
        return self._dir("dataset") / "version.json"

    def dataset_pointer(self) -> Path:
        folder = self.dataset()
        return folder.with_name(folder.name + ".dvc")

    def pretrain_dir(self) -> Path:
        return self._dir("pretrain")

    def backbone(self) -> Path:
        return self.pretrain_dir() / BACKBONE

    def supernet_dir(self) -> Path:
        return self._dir("supernet")

    def supernet(self) -> Path:
        return self.supernet_dir() / SUPERNET

    def latency_model(self, target: str) -> Path:
        return self._dir("latency") / f"{target}.json"

    def search_result(self, target: str) -> Path:
        return self._dir("search") / f"{target}.json"

    def finetune_dir(self, target: str) -> Path:
        return self._dir("finetune") / target

    def finetune_result(self, target: str) -> Path:
        return self.finetune_dir(target) / RESULT

    def package_dir(self, target: str) -> Path:
        return self._dir("export") / target

    def package_result(self, target: str) -> Path:
        return self.package_dir(target) / RESULT


def paths(root: Path, params: dict[str, Any]) -> Paths:
    return Paths(Path(root), params)


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """A stage's result file (tmp + rename): the stage function writes it, so a Dagster materialization
    and ``vitforge stage`` leave the same file for the next stage and bench/ to read."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)
    return path
