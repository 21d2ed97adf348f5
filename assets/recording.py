"""One state for the CLI and the UI: what a `vitforge` command leaves in the project's Dagster instance.

A stage run from the command line (``vitforge stage ...``, ``run``, ``demo``, and so ``dvc repro``) records
what a Dagster run of its asset would have: the asset's value through the IO manager, a materialization
with the same metadata, and its checks, per target partition. They go to the project's own instance
(``DAGSTER_HOME`` = ``<root>/.dagster/home``), the one ``vitforge serve`` starts the UI on. So after the demo
the UI shows every asset materialized and checked, and a new target is one click: only ``architecture``,
``model`` and ``edge_package`` run for it, reading the dataset and supernet the CLI made.
A stage whose gate failed records its failed checks and no materialization, as the asset would.

Each call records its checks under a run id of its own (``cli-<uuid>``), as a Dagster run would: Dagster keeps
one row per (check, run id, partition), so checks reported run-less (run id ``""``) could be recorded only once
per target partition, and a stage run again from the CLI (a second ``vitforge demo``, a ``dvc repro`` after a
param change) would fail on the instance's unique index.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    FilesystemIOManager,
    Output,
    build_init_resource_context,
    build_output_context,
)

from assets.partitions import targets_partitions

CLI_JOB_NAME = "vitforge_cli"  # the job name the CLI's check evaluations carry (no such job runs)


def dagster_home(root: Path) -> Path:
    """The project's Dagster instance folder (git-ignored, beside the IO manager's storage)."""
    return Path(root) / ".dagster" / "home"


def storage_dir(root: Path) -> Path:
    """Where the local IO manager keeps asset values (assets/deployments.py uses the same folder)."""
    return Path(root) / ".dagster" / "storage"


def project_instance(root: Path) -> DagsterInstance:
    """The project's Dagster instance: SQLite under ``dagster_home(root)``, created on first use."""
    home = dagster_home(root)
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.from_config(str(home))


def record(root: Path, asset: str, output: Output | None, checks: list[AssetCheckResult] = (),
           partition: str | None = None) -> None:
    """Record a stage's result as a materialization of ``asset`` (``partition``: the target), with ``checks``.
    ``output`` None (a gate failed): only the checks, failed, and no materialization."""
    key = AssetKey(asset)
    with project_instance(root) as instance:
        if partition is not None and not instance.has_dynamic_partition(targets_partitions.name, partition):
            instance.add_dynamic_partitions(targets_partitions.name, [partition])
        if output is not None:
            io = FilesystemIOManager(base_dir=str(storage_dir(root))).create_io_manager(build_init_resource_context())
            ctx = build_output_context(asset_key=key, partition_key=partition, instance=instance,
                                       asset_partitions_def=targets_partitions if partition else None)
            logging.disable(logging.INFO)  # the IO manager's "Writing file at" debug line, not for a CLI user
            try:
                io.handle_output(ctx, output.value)
            finally:
                logging.disable(logging.NOTSET)
            instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition,
                                                                     metadata=output.metadata))
        run_id = f"cli-{uuid.uuid4()}"
        for check in checks:
            evaluation = AssetCheckEvaluation(asset_key=key, check_name=check.check_name, passed=check.passed,
                                              metadata=check.metadata or {}, partition=partition, blocking=True)
            instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION.value,
                                                       event_specific_data=evaluation, job_name=CLI_JOB_NAME),
                                          run_id=run_id)
