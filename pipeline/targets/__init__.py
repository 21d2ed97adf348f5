"""Hardware targets: one YAML file each under infra/targets/, validated by a pydantic schema."""

from pipeline.targets.schema import Target, TargetError, list_targets, load_target

__all__ = ["Target", "TargetError", "list_targets", "load_target"]
