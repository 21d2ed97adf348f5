"""MLflow tracking for every stage: one run per stage, the same way from the CLI and Dagster.

The embedded default is a SQLite store at ``mlflow/mlflow.db`` with artifacts under
``mlflow/artifacts`` (both relative to the project root). MLflow writes artifact locations as absolute
``file://`` URIs; a store that finds its locations under another folder than its own project (the project was
copied or moved) rewrites them to this root when first opened (``relocate_store``), so a copy reads and writes
its own artifacts, never the original's. With a tracking server (an ``http(s)://`` URI, as in
the prod deployment) the server decides where artifacts go (its ``--artifacts-destination``, e.g. S3): the
experiment is created without a local artifact location.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import git_sha, resolve

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "VITFORGE_MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "VITFORGE_MLFLOW_EXPERIMENT"


def absolute_tracking_uri(uri: str, root: Path) -> str:
    """``sqlite:///relative.db`` is taken from the project root, not the current directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        db = resolve(uri[len(prefix):], root)
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


# MLflow's columns that hold artifact locations (absolute URIs), by table; a column an MLflow version lacks is skipped
LOCATION_COLUMNS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
                    "model_versions": ("source", "storage_location"), "logged_models": ("artifact_location",)}


def relocate_store(db: Path, old: str, new: str) -> int:
    """Rewrite every artifact location that starts with ``old`` to start with ``new`` in the SQLite store ``db``,
    in one transaction; return the rows changed."""
    import sqlite3

    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, columns in LOCATION_COLUMNS.items():
            if table not in tables:
                continue
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for col in (c for c in columns if c in present):
                changed += conn.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "  # noqa: S608
                                        f"WHERE substr({col}, 1, ?) = ?", (new, len(old) + 1, len(old), old)).rowcount
    return changed


PROJECT_TAG = "vitforge.project_root"  # on a local store's experiment: the root (file URI) its locations are under


def is_server(uri: str) -> bool:
    """A tracking server (which owns the artifact store), not a store this process writes itself."""
    return uri.startswith(("http://", "https://"))


@dataclass
class Tracker:
    tracking_uri: str
    experiment: str
    artifact_root: Path
    root: Path | None = None  # the project root: a local store whose locations lie outside it is relocated

    @classmethod
    def from_params(cls, params: dict[str, Any], root: Path) -> Tracker:
        """params.yaml ``mlflow:``; ``$VITFORGE_MLFLOW_TRACKING_URI`` and ``$VITFORGE_MLFLOW_EXPERIMENT`` win (a
        rebuild sends its runs to a store of its own without touching params.yaml, whose hash it proves)."""
        m = params["mlflow"]
        uri = os.environ.get(ENV_TRACKING_URI) or m["tracking_uri"]
        experiment = os.environ.get(ENV_EXPERIMENT) or m["experiment"]
        return cls(absolute_tracking_uri(uri, root), experiment, resolve(m["artifact_root"], root), Path(root))

    def _relocate(self, exp: Any) -> None:
        """For this project's own SQLite store found pointing into another folder (the project was copied or
        moved): rewrite the store's artifact locations to this root. The folder the store was made in is the
        experiment's ``vitforge.project_root`` tag; a store from before the tag is judged by its location, which
        must end in this project's artifact root. An artifact root that params.yaml moved is not a copy: the tag
        still names this root, and nothing is rewritten."""
        import mlflow

        prefix = "sqlite:///"
        if self.root is None or not self.tracking_uri.startswith(prefix):
            return
        root, db = self.root.resolve(), Path(self.tracking_uri[len(prefix):])
        mine = self.artifact_root.resolve()
        if not db.resolve().is_relative_to(root) or not mine.is_relative_to(root):
            return  # a store or artifact root outside the project: shared on purpose, left alone
        here, tagged = root.as_uri(), exp.tags.get(PROJECT_TAG)
        made_in = tagged
        if made_in is None:
            location, tail = exp.artifact_location.rstrip("/"), "/" + mine.relative_to(root).as_posix()
            if not location.startswith("file://") or not location.endswith(tail):
                return  # not this project's layout: an artifact root params.yaml moved on purpose
            made_in = location.removesuffix(tail)
        if made_in != here:
            n = relocate_store(db, made_in + "/", here + "/")
            log.warning("MLflow store %s held artifact locations under %s (a copy of that project): %d moved to %s",
                        db, made_in, n, root)
        if tagged != here:
            mlflow.MlflowClient(self.tracking_uri).set_experiment_tag(exp.experiment_id, PROJECT_TAG, here)

    def connect(self) -> Any:
        """Point MLflow at this store (for registry reads outside a stage run), relocating a copied project's;
        the experiment, or None before its first run."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is not None:
            self._relocate(exp)
        return exp

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        import mlflow

        exp = self.connect()
        if exp is not None:
            return exp.experiment_id
        location, tags = None, {}
        if not is_server(self.tracking_uri):  # a server's artifacts go where the server says
            self.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.artifact_root.resolve().as_uri()
            if self.root is not None:
                tags[PROJECT_TAG] = self.root.resolve().as_uri()
        try:
            return mlflow.create_experiment(self.experiment, artifact_location=location, tags=tags or None)
        except MlflowException as err:  # another run created it meanwhile (runs on other machines)
            exp = mlflow.get_experiment_by_name(self.experiment)
            if err.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
                raise
            return exp.experiment_id

    @contextmanager
    def run(self, stage: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
        """An MLflow run for ``stage``, tagged with the stage, the git SHA and ``tags``; it ends FINISHED,
        FAILED on an error, or KILLED when the user interrupts it."""
        import mlflow

        exp_id = self._experiment_id()
        from pipeline.params import overrides

        sets = overrides()  # `--set`: what this run used beside params.yaml
        all_tags = {"vitforge.stage": stage, "git_sha": git_sha(),
                    **({"vitforge.params_set": json.dumps(sets, sort_keys=True)} if sets else {}), **(tags or {})}
        run = mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=all_tags)
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, self.tracking_uri)
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM through the CLI): the user stopped it, it did not fail
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")

    def run_url(self, run_id: str) -> str:
        """Where a person finds the run: the server page, or the store plus run id."""
        if is_server(self.tracking_uri):
            import mlflow

            exp_id = mlflow.get_run(run_id).info.experiment_id
            return f"{self.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}"
        return f"{self.tracking_uri}#runs/{run_id}"


def log_history(values: list[float], key: str = "loss", max_points: int = 200) -> None:
    """A training curve as an MLflow metric, thinned to at most ``max_points`` steps."""
    import mlflow

    stride = max(1, len(values) // max_points)
    for i in range(0, len(values), stride):
        mlflow.log_metric(key, values[i], step=i)


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=1, sort_keys=True, default=str), artifact_file)


def log_figure(fig: Any, artifact_file: str) -> str:
    """Log a matplotlib figure as a PNG; return its artifact URI (for Dagster metadata)."""
    import matplotlib.pyplot as plt

    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)
    return f"{mlflow.get_artifact_uri()}/{artifact_file}"


def log_file(path: Path, artifact_path: str | None = None) -> str:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)
    return f"{mlflow.get_artifact_uri()}/{(artifact_path + '/') if artifact_path else ''}{Path(path).name}"

