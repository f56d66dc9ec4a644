"""The same dataset job on a real Spark standalone cluster and with an S3-protocol lake.

Both must publish exactly the content a ``local[2]`` run on a local lake publishes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from dataset_helpers import TRAIN_DAYS, load_dag, run_for_day, states, write_test_config
from ports import free_port
from serving_env import settings_environ

from mlpipeline.data import datasets
from mlpipeline.data.landing import land_range
from mlpipeline.lake import Lake

pytestmark = pytest.mark.spark

DAY = dt.date(2013, 1, 5)


@pytest.fixture(scope="module")
def local_hash(landed_lake, tmp_path_factory, airflow_db) -> str:
    """Content hash of version DAY built with ``local[2]`` on a local lake."""
    import shutil

    tmp = tmp_path_factory.mktemp("local-run")
    shutil.copytree(landed_lake, tmp / "lake")
    values = {
        "MLP_LAKE_URI": f"file://{tmp / 'lake'}",
        "MLP_PIPELINE_CONFIG": str(write_test_config(tmp / "pipeline.yaml")),
        "MLP_STATE_DIR": str(tmp / "state"),
    }
    with settings_environ(values):
        run = run_for_day(load_dag("dataset_generation"), DAY)
        assert run.state == "success", states(run)
        return datasets.read_manifest(Lake.from_settings(), "flights_delay", DAY)["content_hash"]


@pytest.fixture
def spark_cluster(tmp_path: Path):
    """A Spark standalone master and one worker from the pyspark distribution, on loopback."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOG_DIR": str(tmp_path / "logs")}
    env.pop("SPARK_MASTER_PORT", None)
    logs = []
    procs = []
    try:
        master_log = open(tmp_path / "master.log", "wb")
        logs.append(master_log)
        procs.append(
            subprocess.Popen(
                [str(spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                 "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
                stdout=master_log, stderr=subprocess.STDOUT, env=env,
            )
        )  # fmt: skip
        master = f"spark://127.0.0.1:{port}"
        worker_log = open(tmp_path / "worker.log", "wb")
        logs.append(worker_log)
        procs.append(
            subprocess.Popen(
                [str(spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker", master,
                 "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(worker_ui),
                 "--work-dir", str(tmp_path / "work")],
                stdout=worker_log, stderr=subprocess.STDOUT, env=env,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 120
        status: dict = {}
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{ui_port}/json/", timeout=2).json()
                if [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]:
                    break
            except (httpx.HTTPError, json.JSONDecodeError):
                pass
            time.sleep(1)
        else:
            raise RuntimeError(f"Spark cluster not ready: {status}; logs in {tmp_path}")
        yield {"master": master, "ui": f"http://127.0.0.1:{ui_port}"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        for log in logs:
            log.close()


def test_standalone_cluster_publishes_the_same_content(env: Lake, spark_cluster, local_hash, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT",
        json.dumps(
            {
                "conn_type": "spark",
                "host": "spark://127.0.0.1",
                "port": int(spark_cluster["master"].rsplit(":", 1)[1]),
            }
        ),
    )
    run = run_for_day(load_dag("dataset_generation"), DAY)
    assert run.state == "success", states(run)
    assert datasets.read_manifest(env, "flights_delay", DAY)["content_hash"] == local_hash
    finished = httpx.get(f"{spark_cluster['ui']}/json/", timeout=5).json()["completedapps"]
    assert [app["name"] for app in finished] == [f"build_dataset_{DAY.isoformat()}_3d"], finished


def test_s3_lake_publishes_the_same_content(s3_bucket, tmp_path, settings_env, airflow_db, local_hash):
    config = write_test_config(tmp_path / "pipeline.yaml")
    settings = settings_env(
        lake_uri=f"s3://{s3_bucket}/scaleout-{tmp_path.name}",
        pipeline_config=str(config),
        state_dir=str(tmp_path / "state"),
    )
    lake = Lake.from_settings(settings)
    land_range(lake, TRAIN_DAYS[0], TRAIN_DAYS[1])
    run = run_for_day(load_dag("dataset_generation"), DAY)
    assert run.state == "success", states(run)
    manifest, _frames = datasets.load_dataset(lake, "flights_delay", DAY)  # hash verified on read
    assert manifest["content_hash"] == local_hash
    assert lake.uri(datasets.dataset_dir("flights_delay", DAY)).startswith("s3://")
