"""Asset checks: the gates of the chain. Blocking where a failure must stop what follows."""


import hashlib
from pathlib import Path

from dagster import AssetCheckResult, MetadataValue, asset_check

from assets.dataset import dataset as dataset_asset
from assets.resources import ProjectResource
from pipeline.data import load_manifest
from pipeline.data.versioning import read_version
from pipeline.stages.common import data_dir


@asset_check(asset=dataset_asset, blocking=True, description="Every split populated, ≥ 2 classes, files match "
             "their manifest sha256, and the DVC file records this version.")
def check_dataset_valid(dataset: dict, project: ProjectResource) -> AssetCheckResult:
    return dataset_check(dataset, project.path)


def dataset_check(dataset: dict, root: Path) -> AssetCheckResult:
    """The dataset gate on an asset value (also what the CLI records after `vitforge stage dataset`)."""
    folder = data_dir(dataset, root)
    manifest = load_manifest(folder)
    mismatched = [f["path"] for f in manifest.files
                  if hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() != f["sha256"]]
    empty_splits = [s for s, n in manifest.counts().items() if n == 0]
    dvc_version = read_version(folder)
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} file(s) differ from the manifest, e.g. {mismatched[0]}")
    if empty_splits:
        problems.append(f"empty split(s): {empty_splits}")
    if len(manifest.classes) < 2:
        problems.append(f"{len(manifest.classes)} class(es)")
    if dvc_version != dataset["version"]:
        problems.append(f"DVC records {dvc_version}, asset says {dataset['version']}")
    return AssetCheckResult(
        check_name="check_dataset_valid", passed=not problems,
        metadata={"problems": MetadataValue.json(problems), "files_checked": len(manifest.files),
                  "dataset_version": dvc_version},
    )
