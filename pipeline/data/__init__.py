"""Datasets: read (ImageFolder, COCO), validate every file, split, manifest, version with DVC.

Knows no model: the training stages read the manifest this package writes.
"""

from pipeline.data.errors import DatasetError
from pipeline.data.manifest import Manifest, build_manifest, load_manifest
from pipeline.data.readers import read_dataset

__all__ = ["DatasetError", "Manifest", "build_manifest", "load_manifest", "read_dataset"]
