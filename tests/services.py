"""The prod deployment's services on loopback (PostgreSQL, moto's S3, an MLflow server on both), and the run
worker that tests/test_prod_services.py starts as "another machine".

As a script: ``python tests/services.py ship TARGET REPORT.json`` runs the ``ship_target`` job for one target
partition in a fresh process whose project root ($VITFORGE_ROOT) lacks every run folder, against the Dagster
instance of $DAGSTER_HOME, with the resources $VITFORGE_DEPLOYMENT picks, and writes what it saw to REPORT.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

INFRA_INSTANCE = Path(__file__).resolve().parent.parent / "infra" / "dagster.yaml"
BUCKET = "vitforge-test"
# moto accepts any key; these only have to be present (boto3, DVC's s3fs and the MLflow server all read them)
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Services:
    env: dict[str, str]  # what a run pod would get: every variable assets/deployments.py names
    postgres_url: str  # the Dagster database, for reading its event log directly
    s3_endpoint: str
    bucket: str  # s3://bucket/prefix of the IO manager
    mlflow_uri: str

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_kwargs())


def _boto_kwargs() -> dict[str, str]:
    return {"aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS["AWS_DEFAULT_REGION"]}


@contextmanager
def prod_services(folder: Path) -> Iterator[Services]:
    """PostgreSQL (databases ``dagster`` and ``mlflow``), moto's S3 with one bucket, and ``mlflow server`` on
    PostgreSQL with its artifacts in that bucket; all stopped on exit."""
    import boto3

    from pipeline.loopback import postgres_server, start_mlflow_server, start_moto_server, stop_group

    with ExitStack() as stack:
        pg = stack.enter_context(postgres_server(["dagster", "mlflow"]))
        moto, endpoint = start_moto_server(folder)
        stack.callback(stop_group, moto)
        boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs()).create_bucket(Bucket=BUCKET)
        server_env = {**AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        mlflow, uri = start_mlflow_server(folder, backend_store_uri=pg.url("mlflow"),
                                          artifacts_destination=f"s3://{BUCKET}/mlflow", env=server_env)
        stack.callback(stop_group, mlflow)
        env = {**AWS, "VITFORGE_DEPLOYMENT": "prod", "MLFLOW_TRACKING_URI": uri,
               "VITFORGE_BUCKET": f"s3://{BUCKET}/vitforge", "AWS_ENDPOINT_URL": endpoint,
               "DAGSTER_PG_HOST": pg.host, "DAGSTER_PG_PORT": str(pg.port), "DAGSTER_PG_USER": pg.user,
               "DAGSTER_PG_PASSWORD": pg.password, "DAGSTER_PG_DB": "dagster"}
        yield Services(env, pg.dsn("dagster"), endpoint, env["VITFORGE_BUCKET"], uri)


def write_instance(home: Path) -> Path:
    """``home/dagster.yaml``: the ``storage:`` section of infra/dagster.yaml as it is (PostgreSQL from the
    DAGSTER_PG_* variables). Its K8sRunLauncher is left out: runs here execute in process."""
    config = yaml.safe_load(INFRA_INSTANCE.read_text(encoding="utf-8"))
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": config["storage"],
                                                        "telemetry": {"enabled": False}}))
    return home


def ship(target: str, report: Path) -> int:
    """The ``ship_target`` run of ``target`` on this "machine"; writes REPORT, returns 0 when the run succeeded."""
    from dagster import DagsterInstance

    from assets.definitions import defs  # resources picked by $VITFORGE_DEPLOYMENT, as in a run pod
    from pipeline.params import load_params, project_root
    from pipeline.paths import paths
    from pipeline.storage import sha256_file

    root = project_root()
    p = paths(root, load_params(root))
    watched = {"supernet": p.supernet(), "dataset": p.dataset(), "dataset_pointer": p.dataset_pointer()}
    before = {name: path.exists() for name, path in watched.items()}
    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def("ship_target").execute_in_process(
            instance=instance, partition_key=target, raise_on_error=False)
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    outputs = {}
    if result.success:
        outputs = {name: result.output_for_node(name) for name in ("architecture", "model", "edge_package")}
    out = {
        "target": target, "root": str(root), "success": result.success, "run_id": result.run_id,
        "before": before, "after": {name: path.exists() for name, path in watched.items()},
        "supernet_sha256": sha256_file(p.supernet()) if p.supernet().is_file() else None,
        "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
        "fetched": [m for m in logs if "fetched" in m], "outputs": outputs,
        "failures": [e.message for e in result.all_events if e.is_failure],
    }
    report.write_text(json.dumps(out, indent=1, default=str))
    return 0 if result.success else 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "ship":
        sys.exit("usage: python tests/services.py ship TARGET REPORT.json")
    sys.exit(ship(sys.argv[2], Path(sys.argv[3])))
