"""The production shape, run for real: ``MLP_STACK=distributed`` as local processes.

Airflow on PostgreSQL with the CeleryExecutor (Redis) and two Celery workers, the lake and
MLflow's artifacts on an S3 server, MLflow on PostgreSQL, a Spark standalone master with two
workers. The whole demo runs on it (``tests/stack_fixtures.py``, started at collection) and
leaves what it leaves on the embedded stack; ``down`` leaving no process is checked when the
session ends.
"""

from __future__ import annotations

import pytest
from demo_outcome import assert_demo_outcome
from stack_fixtures import ADMIN_PASSWORD, DemoStack, run_cli

from mlpipeline.lake import Lake

pytestmark = [pytest.mark.distributed, pytest.mark.spark]

#: Services of the profile, as `status` lists them.
SERVICES = [
    "s3", "spark-master", "spark-worker-1", "spark-worker-2", "mlflow", "airflow-api-server",
    "airflow-scheduler", "airflow-worker-1", "airflow-worker-2", "model-server",
    "airflow-dag-processor", "airflow-triggerer",
]  # fmt: skip


@pytest.fixture(scope="module")
def stack_lake(distributed_stack: DemoStack, monkeypatch_module) -> Lake:
    """The stack's S3 lake, through a connection of this test process."""
    from mlpipeline.local import stack
    from mlpipeline.settings import load_settings

    settings = load_settings({k: v for k, v in distributed_stack.env.items() if k.startswith("MLP_")})
    conn = stack.client_environment(settings)["AIRFLOW_CONN_AWS_DEFAULT"]
    monkeypatch_module.setenv("AIRFLOW_CONN_DISTRIBUTED_S3", conn)
    return Lake.from_uri(settings.resolved_lake_uri, aws_conn_id="distributed_s3")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.timeout(1800)
def test_the_demo_on_the_distributed_profile(distributed_stack: DemoStack, stack_lake: Lake):
    first = distributed_stack.first_demo
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert "Demo finished." in first.stdout
    assert f"login admin / {ADMIN_PASSWORD}" in first.stdout
    assert stack_lake.uri("raw").startswith("s3://")
    assert_demo_outcome(stack_lake, first.stdout)
    assert not (distributed_stack.state / "lake").exists()  # nothing went to a local lake

    status = run_cli(distributed_stack.env, "status")
    assert status.returncode == 0, status.stdout
    assert [line.split()[0] for line in status.stdout.splitlines()] == SERVICES


def test_tasks_ran_on_both_celery_workers(distributed_stack: DemoStack):
    import collections

    api = _api(distributed_stack)
    hosts: collections.Counter = collections.Counter()
    for dag_id in ("raw_landing", "dataset_generation", "model_training", "model_monitoring"):
        for run in api.all_dag_runs(dag_id):
            for ti in api.task_instances(dag_id, run["dag_run_id"]):
                if ti["state"] == "success":
                    hosts[ti["hostname"]] += 1
    assert set(hosts) == {"worker-1", "worker-2"}, hosts
    assert min(hosts.values()) >= 5, hosts


def test_mlflow_keeps_runs_in_postgres_and_artifacts_in_s3(distributed_stack: DemoStack, stack_lake: Lake):
    import sqlalchemy as sa

    prefix = distributed_stack.env["MLP_DATABASE_PREFIX"]
    engine = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{prefix}_mlflow")
    with engine.connect() as conn:
        versions = conn.execute(
            sa.text("SELECT version, source FROM model_versions WHERE name = 'flight_delay' ORDER BY version")
        ).all()
    engine.dispose()
    assert len(versions) >= 3, versions  # January challengers, the forced bad one, the July retrain
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket = distributed_stack.env.get("MLP_S3_BUCKET", "mlpipeline")
    keys = S3Hook(aws_conn_id="distributed_s3").list_keys(bucket_name=bucket, prefix="mlflow/")
    assert any(key.endswith("MLmodel") for key in keys), keys[:20]


def test_dataset_jobs_ran_on_the_spark_cluster(distributed_stack: DemoStack):
    master_log = (distributed_stack.state / "logs" / "spark-master.log").read_text(errors="replace")
    apps = [line for line in master_log.splitlines() if "Registering app build_dataset_" in line]
    assert len(apps) >= 4, apps  # golden, two January versions, the July retrain
    assert master_log.count("Registering worker") >= 2


def _api(stack: DemoStack):
    from mlpipeline.local.airflow_api import AirflowApi

    return AirflowApi(stack.airflow_url, "admin", ADMIN_PASSWORD)
