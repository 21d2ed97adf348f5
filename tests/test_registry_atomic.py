"""Registration is all or nothing: a failure after the model is logged leaves no version without its
tags and no alias moved; a version that cannot be cleaned up is marked and refused."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

import mlflow
from pipeline.registry.mlflow_registry import alias, load_registered, register_package, registered_file, version_tags

MODEL = "atomic-digits"
REQUIRED_TAGS = ("target", "git_sha", "git_dirty", "test_top1", "sha256.model.onnx", "sha256.package.json")


@pytest.fixture
def client(tmp_path):
    """A registry of its own: a SQLite store and an artifact folder in tmp_path."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("atomic", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    return mlflow.MlflowClient()


def register(pkg) -> str:
    with mlflow.start_run():
        tags = version_tags(pkg, dataset_version="d", git_sha="0123abc", git_dirty=False, dagster_run_id="r",
                            params={}, test_top1=0.5, latency_mape=None)
        return register_package(pkg, MODEL, tags)


def candidate(client, pkg) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias("candidate", pkg.target)).version)


def test_a_registered_version_has_every_tag_and_the_alias(client, packages):
    pkg = packages["good"]
    version = register(pkg)
    mv = client.get_model_version(MODEL, version)
    assert all(mv.tags.get(t) for t in REQUIRED_TAGS)
    assert mv.tags["git_sha"] == "0123abc" and mv.tags["git_dirty"] == "false"
    assert "incomplete" not in mv.tags
    assert candidate(client, pkg) == version
    assert registered_file(load_registered(MODEL, version), "model.onnx").is_file()


@pytest.mark.parametrize("failing", ["create_model_version", "set_registered_model_alias"])
def test_a_failure_between_the_steps_leaves_no_version_and_no_alias_moved(client, packages, monkeypatch, failing):
    pkg = packages["good"]
    first = register(pkg)

    def injected(*args, **kwargs):
        raise MlflowException(f"injected failure in {failing}")

    monkeypatch.setattr(mlflow.MlflowClient, failing, injected)
    with pytest.raises(MlflowException, match="injected"):
        register(pkg)
    monkeypatch.undo()
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [str(v.version) for v in versions] == [first]  # nothing half registered remains
    assert all(v.tags.get(t) for v in versions for t in REQUIRED_TAGS)
    assert candidate(client, pkg) == first  # the alias did not move


def test_a_version_that_cannot_be_deleted_is_tagged_incomplete_and_refused(client, packages, monkeypatch):
    pkg = packages["good"]
    first = register(pkg)

    def injected(*args, **kwargs):
        raise MlflowException("injected failure")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", injected)
    monkeypatch.setattr(mlflow.MlflowClient, "delete_model_version", injected)
    with pytest.raises(MlflowException, match="injected"):
        register(pkg)
    monkeypatch.undo()
    left = [v for v in client.search_model_versions(f"name='{MODEL}'") if str(v.version) != first]
    assert len(left) == 1 and left[0].tags["incomplete"].startswith("registration failed")
    assert candidate(client, pkg) == first
    with pytest.raises(ValueError, match="incomplete"):
        load_registered(MODEL, str(left[0].version))
    assert registered_file(load_registered(MODEL, first), "model.onnx").is_file()


def test_registration_and_champion_lookup_through_a_tracking_server(server, packages):
    """The same calls over REST (as the fleet tests use them): tags in the version, alias last, and a
    missing champion alias read as "no champion"."""
    from conftest import register as register_on

    from pipeline.registry.mlflow_registry import champion_of

    uri, _ = server
    pkg = packages["good"]
    version = register_on(uri, pkg, model="atomic-rest")
    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("atomic-rest", alias("candidate", pkg.target)).version) == version
    assert client.get_model_version("atomic-rest", version).tags["git_dirty"] == "false"
    assert champion_of("atomic-rest", pkg.target) is None
