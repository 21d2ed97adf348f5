"""Asset ``dataset``: the validated, split, DVC-versioned customer data."""


from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.metadata import mlflow_run, plots
from assets.resources import MlflowTracking, ProjectResource
from pipeline.stages.dataset import run_dataset


class DatasetConfig(Config):
    """Unset fields take the project's params.yaml ``dataset:`` values at run time, as ``dvc repro`` does."""

    data: str | None = Field(default=None, description="dataset folder, or builtin:digits (default: params.yaml)")
    format: str | None = Field(default=None, description="imagefolder or coco (default: params.yaml)")
    skip_invalid: bool | None = Field(default=None, description="drop bad files instead of failing")
    unlabeled: str | None = Field(default=None, description="a folder of images without labels, seen only by MAE")
    resplit: bool | None = Field(default=None, description="split a train/val(/test) folder by hash instead of "
                                 "keeping its split (default: params.yaml)")


@asset(group_name="data", description="Validated, split and DVC-versioned images (ImageFolder or COCO).")
def dataset(
    context: AssetExecutionContext, config: DatasetConfig, project: ProjectResource, mlflow: MlflowTracking
) -> Output[dict]:
    tracker = mlflow.tracker()
    params = project.params()
    p = params["dataset"]
    res = run_dataset(project.path, params, tracker, data=config.data or p["data"], fmt=config.format or p["format"],
                      skip_invalid=p["skip_invalid"] if config.skip_invalid is None else config.skip_invalid,
                      unlabeled=config.unlabeled, resplit=config.resplit,
                      tags={"dagster_run_id": context.run_id})
    context.log.info(f"dataset version {res.version}: {res.num_images} images, {res.counts}")
    return dataset_output(res, tracker)


def dataset_output(res, tracker) -> Output[dict]:
    """The asset's value and metadata for a dataset stage result (also what the CLI records)."""
    return Output(
        res.to_dict(),
        metadata={
            "dataset_version": res.version,
            "source_hash": res.source_hash,  # what data_change_sensor compares the folder with
            "images": res.num_images,
            "unlabeled_images": res.unlabeled,
            "native_size": MetadataValue.json(res.native_size),
            "classes": MetadataValue.json(res.classes),
            "split_counts": MetadataValue.json(res.counts),
            "skipped": MetadataValue.json(res.skipped),
            **plots(tracker, res.mlflow_run_id, class_histogram=res.histogram_uri),
            "manifest": MetadataValue.path(res.manifest_path),
            **mlflow_run(tracker, res.mlflow_run_id),
        },
    )
