"""Asset ``dataset``: the validated, split, DVC-versioned customer data."""


from typing import Literal

from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.metadata import artifact, mlflow_run
from assets.resources import MlflowTracking, ProjectResource
from pipeline.params import section
from pipeline.stages.dataset import run_dataset

_P = section("dataset")


class DatasetConfig(Config):
    data: str = Field(default=_P["data"], description="dataset folder, or builtin:digits")
    format: Literal["imagefolder", "coco"] = _P["format"]
    skip_invalid: bool = Field(default=_P["skip_invalid"], description="drop bad files instead of failing")
    unlabeled: str | None = Field(default=None, description="a folder of images without labels, seen only by MAE")


@asset(group_name="data", description="Validated, split and DVC-versioned images (ImageFolder or COCO).")
def dataset(
    context: AssetExecutionContext, config: DatasetConfig, project: ProjectResource, mlflow: MlflowTracking
) -> Output[dict]:
    tracker = mlflow.tracker()
    res = run_dataset(project.path, project.params(), tracker, data=config.data, fmt=config.format,
                      skip_invalid=config.skip_invalid, unlabeled=config.unlabeled,
                      tags={"dagster_run_id": context.run_id})
    context.log.info(f"dataset version {res.version}: {res.num_images} images, {res.counts}")
    return Output(
        res.to_dict(),
        metadata={
            "dataset_version": res.version,
            "images": res.num_images,
            "unlabeled_images": res.unlabeled,
            "native_size": MetadataValue.json(res.native_size),
            "classes": MetadataValue.json(res.classes),
            "split_counts": MetadataValue.json(res.counts),
            "skipped": MetadataValue.json(res.skipped),
            "class_histogram": artifact(res.histogram_uri),
            "manifest": MetadataValue.path(res.manifest_path),
            **mlflow_run(tracker, res.mlflow_run_id),
        },
    )
