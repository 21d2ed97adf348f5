"""The targets ``dvc.yaml`` builds, kept in ``infra/dvc-targets.yaml`` (its ``vars:``).

DVC cannot list a folder, so the list is a file: every target in ``targets_dir`` that any CPU host can
measure (ONNX Runtime). ``vitforge targets sync`` rewrites it from the target files, and a test holds the
committed one to them: adding a target file and syncing adds its search, finetune and package stages.
TensorRT targets are proven on their own device (``vitforge stage ... --target``, or its Dagster partition),
so a ``dvc repro`` on a machine without that device does not fail on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.params import resolve
from pipeline.targets import list_targets, load_target

INDEX = Path("infra") / "dvc-targets.yaml"
KEY = "dvc_targets"
TIGHTEST = "space_fit_target"  # the target an `auto` space is fitted to: the pretrain stage's params dep
HEADER = ("# Written by `vitforge targets sync` from the target files (pipeline/dvc_targets.py): the targets\n"
          "# dvc.yaml builds, those any CPU host measures. Do not edit; add a file to infra/targets/ and sync.\n")


def dvc_targets(root: Path, params: dict[str, Any]) -> list[str]:
    return sorted(_targets(root, params))


def _targets(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for name, path in sorted(list_targets(resolve(params["targets_dir"], root)).items()):
        target = load_target(path)  # a bad target file is a TargetError naming it
        if target.runtime == "onnxruntime":
            found[name] = (target, path)
    return found


def render(root: Path, params: dict[str, Any]) -> str:
    """The index: the targets, and the one an ``auto`` space is fitted to (the tightest budget; with its file's
    sha256), so that the pretrain stage re-runs when that changes, not whenever a target file is added."""
    from pipeline.targets.schema import target_file_sha256

    found = _targets(root, params)
    tight = min(found, key=lambda n: (found[n][0].latency_budget_ms, n)) if found else None
    body = {KEY: sorted(found), TIGHTEST: None if tight is None else
            {"name": tight, "sha256": target_file_sha256(found[tight][1])}}
    return HEADER + yaml.safe_dump(body, sort_keys=False)


def sync_index(root: Path, params: dict[str, Any]) -> tuple[list[str], bool]:
    """Write the index from the target files; returns the names and whether the file changed."""
    names = dvc_targets(root, params)
    path = root / INDEX
    text = render(root, params)
    changed = not path.is_file() or path.read_text() != text
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return names, changed
