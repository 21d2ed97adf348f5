"""The MLflow tracking server over its REST API, with the standard library only (no mlflow on devices).

What a device needs: a registered model's tags (the fleet's rollout state), the version an alias points
at (with its tags: the sha256 of every file), the run artifacts of that version's edge package, and a
place to report to (one MLflow run per report in the experiment ``fleet-<name>``).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = "edge_package"  # where the pipeline logs the package in the registering run


class RegistryError(RuntimeError):
    """The tracking server could not be reached or refused a request."""


@dataclass
class ModelVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    def sha256(self) -> dict[str, str]:
        return {k.removeprefix("sha256."): v for k, v in self.tags.items() if k.startswith("sha256.")}


class MlflowRest:
    def __init__(self, uri: str, timeout_s: float = 10.0):
        self.uri, self.timeout = uri.rstrip("/"), timeout_s
        self.bytes_downloaded = 0

    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None) -> dict:
        url = f"{self.uri}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            # MLflow answers a missing alias with INVALID_PARAMETER_VALUE "... alias ... not found"
            if err.code == 404 or "RESOURCE_DOES_NOT_EXIST" in detail or (
                    "INVALID_PARAMETER_VALUE" in detail and "not found" in detail):
                raise KeyError(detail) from None
            raise RegistryError(f"{method} {path}: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise RegistryError(f"{method} {path}: {err}") from None
        except ValueError as err:  # not JSON: a proxy's error page
            raise RegistryError(f"{method} {path}: {err}") from None

    def model_tags(self, name: str) -> dict[str, str]:
        rm = self._call("GET", "/api/2.0/mlflow/registered-models/get", {"name": name})["registered_model"]
        return {t["key"]: t["value"] for t in rm.get("tags", [])}

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        try:
            mv = self._call("GET", "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias})
        except KeyError:
            return None
        mv = mv["model_version"]
        return ModelVersion(name, str(mv["version"]), mv.get("run_id", ""),
                            {t["key"]: t["value"] for t in mv.get("tags", [])})

    def download(self, mv: ModelVersion, files: list[str], dest: Path) -> None:
        """The version's package files into ``dest`` (the tracking server's artifact endpoint)."""
        for name in files:
            params = {"run_uuid": mv.run_id, "path": f"{PACKAGE_DIR}/{name}"}
            url = f"{self.uri}/get-artifact?{urllib.parse.urlencode(params)}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as resp, open(dest / name, "wb") as out:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        self.bytes_downloaded += len(chunk)
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    continue  # missing: the integrity check names it
                raise RegistryError(f"download {name} of {mv.name} v{mv.version}: HTTP {err.code}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                raise RegistryError(f"download {name} of {mv.name} v{mv.version}: {err}") from None

    def experiment_id(self, name: str) -> str:
        try:
            return self._call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                              {"experiment_name": name})["experiment"]["experiment_id"]
        except KeyError:
            try:
                return self._call("POST", "/api/2.0/mlflow/experiments/create", body={"name": name})["experiment_id"]
            except RegistryError:  # another device created it first
                return self._call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                                  {"experiment_name": name})["experiment"]["experiment_id"]

    def report(self, experiment: str, run_name: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
        """One finished run in ``experiment`` with ``tags`` and ``metrics``; returns its id."""
        now = int(time.time() * 1000)
        run = self._call("POST", "/api/2.0/mlflow/runs/create", body={
            "experiment_id": self.experiment_id(experiment), "run_name": run_name, "start_time": now,
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]})["run"]
        run_id = run["info"]["run_id"]
        if metrics:
            self._call("POST", "/api/2.0/mlflow/runs/log-batch", body={"run_id": run_id, "metrics": [
                {"key": k, "value": float(v), "timestamp": now, "step": 0} for k, v in metrics.items()]})
        self._call("POST", "/api/2.0/mlflow/runs/update", body={"run_id": run_id, "status": "FINISHED",
                                                                  "end_time": int(time.time() * 1000)})
        return run_id
