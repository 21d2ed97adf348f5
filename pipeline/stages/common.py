"""What every training stage needs: the dataset it reads and the provenance it records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.versioning import read_version
from pipeline.params import git_sha, resolve


def dataset_ref(root: Path, params: dict[str, Any]) -> dict[str, str]:
    """The dataset as the dataset stage left it (for the CLI; Dagster passes the asset's value)."""
    folder = resolve(params["dataset"]["tracked_dir"], root)
    if not (folder.with_name(folder.name + ".dvc")).is_file():
        raise FileNotFoundError(f"{folder}.dvc: no dataset version yet; run `vitforge stage dataset` first")
    return {"tracked_dir": str(folder), "version": read_version(folder)}


def provenance(dataset: dict[str, Any], tags: dict[str, str] | None) -> dict[str, str]:
    """Carried by every checkpoint and weights file: dataset version, git SHA, Dagster run id."""
    return {"dataset_version": dataset["version"], "git_sha": git_sha(),
            "dagster_run_id": (tags or {}).get("dagster_run_id", "")}
