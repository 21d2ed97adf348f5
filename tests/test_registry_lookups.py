"""What registration reads besides the package: the champion behind its alias, and the git provenance."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import mlflow
from pipeline.registry.mlflow_registry import ProvenanceError, champion_of, git_provenance


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@vitforge.invalid", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_champion_lookup_fails_loudly_on_registry_errors_other_than_a_missing_alias(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, PERMISSION_DENIED

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert champion_of("no-such-model", "t") is None  # no registered model: no champion
    mlflow.MlflowClient().create_registered_model("m")
    assert champion_of("m", "t") is None  # the store's own "alias not found"
    for code, message in ((INTERNAL_ERROR, "database is locked"),
                          (INVALID_PARAMETER_VALUE, "Invalid model name 'm'"),
                          (PERMISSION_DENIED, "no read access to model m")):
        def failing(self, name, alias_name, code=code, message=message):
            raise MlflowException(message, error_code=code)

        monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", failing)
        with pytest.raises(MlflowException, match=message):
            champion_of("m", "t")


def test_git_provenance_records_sha_and_dirty_tree(tmp_path):
    (tmp_path / "f.txt").write_text("a")
    git(tmp_path, "init", "-q")
    with pytest.raises(ProvenanceError, match="no commit"):
        git_provenance(tmp_path)
    git(tmp_path, "add", "f.txt")
    git(tmp_path, "commit", "-q", "-m", "c")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_provenance(tmp_path) == git_provenance(tmp_path, allow_dirty=True)
    assert (git_provenance(tmp_path).sha, git_provenance(tmp_path).dirty) == (head, False)
    (tmp_path / "untracked.txt").write_text("u")
    assert not git_provenance(tmp_path).dirty  # untracked files (runs/, mlflow/) do not count
    (tmp_path / "f.txt").write_text("b")
    assert git_provenance(tmp_path).dirty and git_provenance(tmp_path).sha == head
