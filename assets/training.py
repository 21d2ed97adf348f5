"""Assets ``pretrained_backbone`` (MAE) and ``supernet`` (weight-sharing training)."""

from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.metadata import mlflow_run, plots
from assets.resources import MlflowTracking, ProjectResource
from pipeline.stages.pretrain import run_pretrain
from pipeline.stages.supernet import run_supernet


class PretrainConfig(Config):
    """Unset fields take params.yaml ``pretrain:`` at run time, so a materialization trains what dvc repro does."""

    epochs: int | None = Field(default=None, description="passes over every image (default: params.yaml)")
    time_budget_s: float | None = Field(default=None, description="seconds; steps fit it (default: params.yaml)")
    lr: float | None = None
    resume: bool = Field(default=False, description="continue from the last checkpoint")


class SupernetConfig(Config):
    """Unset fields take params.yaml ``supernet:`` at run time."""

    epochs: int | None = Field(default=None, description="passes over the train split (default: params.yaml)")
    time_budget_s: float | None = Field(default=None, description="seconds; steps fit it (default: params.yaml)")
    lr: float | None = None
    resume: bool = Field(default=False, description="continue from the last checkpoint")


@asset(group_name="training", description="MAE pre-training of the largest ViT of the search space (labels unused).")
def pretrained_backbone(context: AssetExecutionContext, config: PretrainConfig, dataset: dict,
                        project: ProjectResource, mlflow: MlflowTracking) -> Output[dict]:
    tracker = mlflow.tracker()
    res = run_pretrain(project.path, project.params(), tracker, dataset, tags={"dagster_run_id": context.run_id},
                       resume=config.resume,
                       overrides={"epochs": config.epochs, "lr": config.lr, "time_budget_s": config.time_budget_s})
    context.log.info(f"MAE: {res.steps} steps, final loss {res.final_loss:.4f}, {res.images_per_s:.0f} images/s")
    return pretrain_output(res, tracker)


@asset(group_name="training", description="Weight-sharing ViT supernet fine-tuned on the labels (sandwich rule).")
def supernet(context: AssetExecutionContext, config: SupernetConfig, dataset: dict, pretrained_backbone: dict,
             project: ProjectResource, mlflow: MlflowTracking) -> Output[dict]:
    tracker = mlflow.tracker()
    res = run_supernet(project.path, project.params(), tracker, dataset, pretrained_backbone["weights"],
                       tags={"dagster_run_id": context.run_id}, resume=config.resume,
                       overrides={"epochs": config.epochs, "lr": config.lr, "time_budget_s": config.time_budget_s})
    context.log.info(f"supernet val top-1: {res.val_top1}")
    return supernet_output(res, tracker)


def pretrain_output(res, tracker) -> Output[dict]:
    """The asset's value and metadata for a pretrain stage result (also what the CLI records)."""
    return Output(res.to_dict(), metadata={
        "final_loss": res.final_loss, "steps": res.steps, "images_per_s": res.images_per_s,
        "weights": MetadataValue.path(res.weights), "dataset_version": res.dataset_version,
        **plots(tracker, res.mlflow_run_id, loss_curve=res.loss_curve_uri, reconstructions=res.reconstructions_uri),
        "space": MetadataValue.json(res.space), "space_fit": MetadataValue.json(res.space_fit),
        **mlflow_run(tracker, res.mlflow_run_id),
    })


def supernet_output(res, tracker) -> Output[dict]:
    """The asset's value and metadata for a supernet stage result (also what the CLI records)."""
    return Output(res.to_dict(), metadata={
        "val_top1": MetadataValue.json(res.val_top1), "steps": res.steps,
        "weights": MetadataValue.path(res.weights), "dataset_version": res.dataset_version,
        **plots(tracker, res.mlflow_run_id, loss_curve=res.loss_curve_uri, val_top1_plot=res.val_top1_uri),
        **mlflow_run(tracker, res.mlflow_run_id),
    })
