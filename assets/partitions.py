"""One dynamic partition per hardware target (infra/targets/NAME.yaml), filled by a sensor."""

from dagster import DynamicPartitionsDefinition

targets_partitions = DynamicPartitionsDefinition(name="targets")
