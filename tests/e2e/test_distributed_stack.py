"""The production shape, run for real: ``MLP_STACK=distributed`` as local processes.

Airflow on PostgreSQL with the CeleryExecutor (Redis) and two Celery workers, the lake and
MLflow's artifacts on an S3 server, MLflow on PostgreSQL, a Spark standalone master with two
workers. The whole demo runs on it (``tests/stack_fixtures.py``, started at collection) and
leaves what it leaves on the embedded stack; ``down`` leaving no process is checked when the
session ends.
"""

from __future__ import annotations

import json
import os

import pytest
from demo_outcome import assert_demo_outcome
from serving_fixtures import predict_load
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
    assert f"login admin / {distributed_stack.env.get('MLP_ADMIN_PASSWORD', ADMIN_PASSWORD)}" in first.stdout
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
                if ti["state"] != "success":
                    continue
                if not ti["hostname"]:  # the scheduler finishes an EmptyOperator branch itself
                    assert ti["task_id"] in ("healthy", "alarm_only"), ti
                    continue
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


def test_the_cluster_on_s3_publishes_what_the_embedded_stack_publishes(
    distributed_stack: DemoStack, stack_lake: Lake, demo_stack: DemoStack
):
    """Both demos build the same versions from the same raw days: the Spark cluster with an S3
    lake (staged through a folder every worker sees) publishes byte for byte what Spark Connect
    ``local[*]`` on the file lake publishes."""
    from mlpipeline.data import datasets

    demo_stack.require_demo()
    embedded = Lake.from_uri(f"file://{demo_stack.lake_root}")
    versions = [v for v in embedded.committed_partitions("datasets/flights_delay", key="ds")
                if v in stack_lake.committed_partitions("datasets/flights_delay", key="ds")]  # fmt: skip
    assert {"2013-01-03", "2013-01-04"} <= set(versions), versions
    for version in versions:
        hashes = [datasets.read_manifest(lake, "flights_delay", version)["content_hash"]
                  for lake in (embedded, stack_lake)]  # fmt: skip
        assert hashes[0] == hashes[1], version
    golden = {
        lake.root_uri: {
            g.version: g.content_hash for g in datasets.golden_versions(lake, "flights_delay_golden")
        }
        for lake in (embedded, stack_lake)
    }
    assert golden[embedded.root_uri]["v1"] == golden[stack_lake.root_uri]["v1"], golden


def _api(stack: DemoStack):
    from mlpipeline.local.airflow_api import AirflowApi

    return AirflowApi(stack.airflow_url, "admin", stack.env.get("MLP_ADMIN_PASSWORD", ADMIN_PASSWORD))


# ------------------------------------------------------------------------------ faults
KILL_DAY = "2013-01-06"  # a version the demo did not build; its window is landed


@pytest.mark.timeout(900)
def test_a_worker_killed_mid_task_is_retried_on_the_other_worker(
    distributed_stack: DemoStack, stack_lake: Lake
):
    """SIGKILL the Celery worker (its whole process group: worker, task, Spark driver) while the
    dataset job runs: the scheduler fails the silent task after the heartbeat timeout, the retry
    runs on the other worker, and the version is published whole, once."""
    import signal
    import time

    from mlpipeline.data import datasets

    api = _api(distributed_stack)
    run_id = api.trigger("dataset_generation", conf={"version_day": KILL_DAY})["dag_run_id"]
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, api.task_instances("dataset_generation", run_id)
        build = _ti(api, "dataset_generation", run_id, "build_dataset")
        if build and build["state"] == "running" and build["hostname"]:
            victim = build["hostname"]
        time.sleep(1)
    time.sleep(3)  # the Spark application is on the cluster now
    record = json.loads((distributed_stack.state / "run" / f"airflow-{victim}.json").read_text())
    os.killpg(record["pid"], signal.SIGKILL)
    _wait_dead(record["pid"])

    state = api.wait_for_run("dataset_generation", run_id, timeout_s=600)
    build = _ti(api, "dataset_generation", run_id, "build_dataset")
    assert state == "success", api.task_instances("dataset_generation", run_id)
    assert build["try_number"] >= 2, build
    assert build["hostname"] != victim, build
    manifest, frames = datasets.load_dataset(stack_lake, "flights_delay", KILL_DAY)  # hash checked on read
    assert manifest["run"]["run_id"] == run_id
    assert {split: len(frame) for split, frame in frames.items()} == manifest["rows"]
    assert stack_lake.committed_partitions("datasets/flights_delay", key="ds").count(KILL_DAY) == 1
    _up(distributed_stack)  # the stack whole again for what runs next (up starts what is not running)


@pytest.mark.timeout(1200)
def test_scheduler_killed_and_mlflow_stopped_during_training_register_one_version(
    distributed_stack: DemoStack,
):
    """While ``train_model`` runs: SIGKILL the scheduler, stop the MLflow server; 30 s later
    ``up`` brings both back. The new scheduler adopts the Celery task, MLflow calls are retried,
    the run completes, and exactly one version carries the run's id."""
    import signal
    import time

    import mlflow

    from mlpipeline.deployment import registry

    api = _api(distributed_stack)
    run_id = api.trigger("model_training", conf={"dataset_version": KILL_DAY, "n_trials": 2})["dag_run_id"]
    _wait_task(api, "model_training", run_id, "train_model", "running", timeout_s=900)
    time.sleep(5)  # inside the search now
    _stop(distributed_stack, "airflow-scheduler", signal.SIGKILL)
    _stop(distributed_stack, "mlflow", signal.SIGTERM)
    time.sleep(30)
    _up(distributed_stack)

    state = api.wait_for_run("model_training", run_id, timeout_s=900)
    assert state == "success", api.task_instances("model_training", run_id)
    client = mlflow.MlflowClient(distributed_stack.mlflow_url)
    versions = client.search_model_versions(f"name='{MODEL}' and tags.airflow_run_id='{run_id}'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    assert versions[0].tags["dataset_version"] == KILL_DAY
    mlflow.set_tracking_uri(distributed_stack.mlflow_url)
    assert registry.current_champion(client, MODEL) is not None  # the champion alias still points somewhere


@pytest.mark.timeout(600)
def test_model_server_killed_under_load_comes_back_on_the_champion_and_loses_nothing(
    distributed_stack: DemoStack, stack_lake: Lake
):
    """SIGKILL the model server while four clients send; ``up`` restarts it: it serves the
    champion again, and every prediction it answered is in the log on S3 (from its journal)."""
    import datetime as dt
    import signal
    import time

    import httpx

    from mlpipeline.serving import location
    from mlpipeline.serving.features import request_rows_for_day
    from mlpipeline.serving.prediction_log import read_day

    day = "2013-12-30"  # a request date nothing else logs
    url = distributed_stack.serving_url
    champion = str(location.read_pointer(stack_lake, MODEL)["version"])
    features = location.served_features(stack_lake, MODEL, champion)
    rows = request_rows_for_day(stack_lake, dt.date(2013, 1, 9), features)[:6]  # real landed flights
    assert httpx.get(f"{url}/health", timeout=10).json()["version"] == champion
    with predict_load(url, rows, day, clients=4, batch=2) as load:
        load.wait_for(200, timeout_s=120)
        _stop(distributed_stack, "model-server", signal.SIGKILL)
    answered = load.answered
    _up(distributed_stack)

    assert httpx.get(f"{url}/health", timeout=10).json()["version"] == champion
    deadline = time.monotonic() + 60
    while not set(answered) <= set(_logged(read_day, stack_lake, day)):
        assert time.monotonic() < deadline, "answered predictions missing from the log"
        time.sleep(2)
    logged = read_day(stack_lake, day)
    assert len(logged) == len(logged.drop_duplicates(["request_id", "flight_key"]))  # none twice


@pytest.mark.timeout(900)
def test_s3_stopped_before_a_dataset_publish_leaves_no_half_version_and_the_retry_publishes_it_whole(
    distributed_stack: DemoStack, stack_lake: Lake
):
    """Stop the S3 server (it keeps its objects: snapshot at SIGTERM, restored at start) while
    the dataset job runs on the cluster (its inputs already staged): the gate or the publish
    meets the outage and fails; ``up`` restarts S3. No version is visible meanwhile, and the
    retry publishes it whole, once. (A crash in the middle of the upload itself is the lake's
    marker-last commit, ``tests/unit/test_lake.py``.)"""
    import signal
    import time

    from mlpipeline.data import datasets

    day = "2013-01-07"
    api = _api(distributed_stack)
    run_id = api.trigger("dataset_generation", conf={"version_day": day})["dag_run_id"]
    _wait_task(api, "dataset_generation", run_id, "build_dataset", "running", timeout_s=300)
    time.sleep(3)
    _stop(distributed_stack, "s3", signal.SIGTERM)
    # S3 stays down until a task of the run meets it and fails (then waits 30 s for its retry).
    deadline = time.monotonic() + 400
    while not (
        hit := [t for t in api.task_instances("dataset_generation", run_id) if t["state"] == "up_for_retry"]
    ):
        assert time.monotonic() < deadline, api.task_instances("dataset_generation", run_id)
        time.sleep(1)
    _up(distributed_stack)
    directory = datasets.dataset_dir("flights_delay", day)
    assert not stack_lake.is_committed(directory), hit  # the failed attempt left no version

    state = api.wait_for_run("dataset_generation", run_id, timeout_s=600)
    assert state == "success", api.task_instances("dataset_generation", run_id)
    retried = _ti(api, "dataset_generation", run_id, hit[0]["task_id"])
    assert retried["try_number"] >= 2, retried
    manifest, frames = datasets.load_dataset(stack_lake, "flights_delay", day)  # hash checked on read
    assert manifest["run"]["run_id"] == run_id
    assert {split: len(frame) for split, frame in frames.items()} == manifest["rows"]
    assert stack_lake.committed_partitions("datasets/flights_delay", key="ds").count(day) == 1


MODEL = "flight_delay"


def _ti(api, dag_id: str, run_id: str, task_id: str) -> dict | None:
    return next((t for t in api.task_instances(dag_id, run_id) if t["task_id"] == task_id), None)


def _wait_task(api, dag_id: str, run_id: str, task_id: str, state: str, timeout_s: float) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        ti = _ti(api, dag_id, run_id, task_id)
        if ti and ti["state"] == state:
            return ti
        assert time.monotonic() < deadline, (task_id, state, api.task_instances(dag_id, run_id))
        time.sleep(1)


def _stop(stack: DemoStack, service: str, sig: int) -> None:
    """Signal a service's whole process group and wait until it is gone."""
    record = json.loads((stack.state / "run" / f"{service}.json").read_text())
    os.killpg(record["pid"], sig)
    _wait_dead(record["pid"], timeout_s=60)


def _up(stack: DemoStack) -> None:
    started = run_cli(stack.env, "up", timeout=600)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"


def _logged(read_day, lake: Lake, day: str) -> list[str]:
    frame = read_day(lake, day)
    return list(frame["request_id"]) if len(frame) else []


def _wait_dead(pgid: int, timeout_s: float = 30) -> bool:
    import time

    from mlpipeline.local.stack import _group_alive

    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} survived SIGKILL"
        time.sleep(0.5)
    return True
