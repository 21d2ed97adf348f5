"""One dynamic partition per hardware target (infra/targets/NAME.yaml), kept in step with the folder.

``sync_targets`` adds and removes partitions against the folder: ``vitforge serve`` and
``vitforge targets sync`` call it, so a new target is there before the sensor's first tick, and
``targets_sensor`` keeps them in step while Dagster runs. The gates are checked per partition.
"""

import warnings

from dagster import AssetCheckSpec, DagsterInstance, DynamicPartitionsDefinition
from dagster._utils.warnings import PreviewWarning

targets_partitions = DynamicPartitionsDefinition(name="targets")


def partitioned_check(name: str, asset: str, description: str | None = None) -> AssetCheckSpec:
    """A blocking check of one target partition: a failure there says nothing of another target's."""
    with warnings.catch_warnings():  # partitioned checks are a preview API of Dagster 1.13
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(name, asset=asset, blocking=True, description=description,
                              partitions_def=targets_partitions)


def partition_changes(instance: DagsterInstance, names: list[str]) -> tuple[list[str], list[str]]:
    """(to add, to remove) so that the instance's target partitions are exactly ``names``."""
    have = set(instance.get_dynamic_partitions(targets_partitions.name))
    return sorted(set(names) - have), sorted(have - set(names))


def sync_targets(instance: DagsterInstance, names: list[str]) -> tuple[list[str], list[str]]:
    """Make the instance's target partitions exactly ``names``; what was added and removed."""
    added, removed = partition_changes(instance, names)
    if added:
        instance.add_dynamic_partitions(targets_partitions.name, added)
    for name in removed:
        instance.delete_dynamic_partition(targets_partitions.name, name)
    return added, removed
