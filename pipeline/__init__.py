"""vitforge's work, importable without Dagster: data, models, ssl, nas, targets, export, registry."""

from pipeline import torchvision_ops  # noqa: F401  (must run before anything imports timm)
