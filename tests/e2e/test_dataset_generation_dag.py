"""End-to-end: ``dataset_generation`` and ``golden_dataset`` with ``dag.test()`` on real data.

A 3-day window keeps each Spark run short; the Spark job is the real one, submitted by the
real ``SparkSubmitOperator`` to ``local[2]``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pendulum
import pytest
import yaml

from mlpipeline.config import PROJECT_ROOT
from mlpipeline.data import datasets
from mlpipeline.data.landing import land_range, partition_dir
from mlpipeline.lake import Lake

pytestmark = pytest.mark.spark

TRAIN_DAYS = (dt.date(2013, 1, 1), dt.date(2013, 1, 7))
GOLDEN_DAYS = (dt.date(2013, 1, 20), dt.date(2013, 1, 22))


def write_test_config(path: Path, **quality) -> Path:
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["dataset"].update({"window_days": 3, "sensor_poke_interval_s": 1, "sensor_timeout_s": 4})
    cfg["quality"].update(quality)
    cfg["golden"].update(
        {
            "default_start": GOLDEN_DAYS[0].isoformat(),
            "default_end": GOLDEN_DAYS[1].isoformat(),
            "default_sample_size": 1000,
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def landed_lake(tmp_path_factory) -> str:
    """A lake with the real raw days the tests build from (copied per test)."""
    root = tmp_path_factory.mktemp("raw-lake")
    lake = Lake.from_uri(f"file://{root}")
    land_range(lake, *TRAIN_DAYS)
    land_range(lake, *GOLDEN_DAYS)
    return str(root)


@pytest.fixture
def env(landed_lake, tmp_path, settings_env, airflow_db):
    """Settings for one test: its own copy of the landed lake and the 3-day test config."""
    import shutil

    lake_root = tmp_path / "lake"
    shutil.copytree(landed_lake, lake_root)
    config = write_test_config(tmp_path / "pipeline.yaml")
    settings = settings_env(
        lake_uri=f"file://{lake_root}", pipeline_config=str(config), state_dir=str(tmp_path / "state")
    )
    return Lake.from_settings(settings)


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / f"{dag_id}.py"))
    assert bag.import_errors == {}
    dag = bag.dags[dag_id]
    for task in dag.tasks:
        task.retries = 0  # failures are asserted; dag.test() would wait out retry delays
    return dag


def run_for_day(dag, day: dt.date):
    """A manual run covering data interval ``[day, day+1)`` (see test_raw_landing_dag)."""
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, tz="UTC").add(days=1))


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_golden_then_two_versions_and_a_reproducible_rerun(env: Lake):
    golden = load_dag("golden_dataset")
    run = golden.test()
    assert run.state == "success", states(run)
    info = datasets.current_golden(env, "flights_delay_golden")
    assert info is not None
    assert (info.version, info.start, info.end) == ("v1", *GOLDEN_DAYS)
    meta, frame = datasets.load_golden(env, "flights_delay_golden", "v1")
    assert len(frame) == 1000
    assert meta["rows"] == {"golden": 1000}

    again = golden.test()  # the same version name is refused; the frozen set is untouched
    assert again.state == "failed"
    assert states(again)["check_version"] == "failed"
    assert datasets.load_golden(env, "flights_delay_golden", "v1")[0]["content_hash"] == meta["content_hash"]

    dag = load_dag("dataset_generation")
    for day in (dt.date(2013, 1, 4), dt.date(2013, 1, 5)):
        run = run_for_day(dag, day)
        assert run.state == "success", states(run)
    assert env.committed_partitions("datasets/flights_delay", key="ds") == ["2013-01-04", "2013-01-05"]
    manifest, frames = datasets.load_dataset(env, "flights_delay", "2013-01-04")
    assert manifest["window"] == {"start": "2013-01-02", "end": "2013-01-04", "days": 3}
    assert manifest["rows"]["train"] == len(frames["train"]) > 1000
    assert 0.1 < manifest["rows"]["validation"] / sum(manifest["rows"].values()) < 0.3
    assert manifest["golden"]["version"] == "v1"
    assert manifest["golden"]["overlaps_window"] is False
    assert manifest["quality"]["success"] is True
    assert manifest["code_version"]["git_sha"]
    assert sorted(manifest["source_partitions"]) == ["airlines", "flights", "planes", "weather"]
    assert {c["name"] for c in manifest["columns"]} >= {"flight_key", "is_delayed"}
    assert env.exists("reports/quality/flights_delay/2013-01-04/summary.md")

    # Rerun: the same inputs give the same content and the same bytes.
    files_before = _file_bytes(env, "datasets/flights_delay/ds=2013-01-04")
    run = run_for_day(dag, dt.date(2013, 1, 4))
    assert run.state == "success", states(run)
    rerun = datasets.read_manifest(env, "flights_delay", "2013-01-04")
    assert rerun["content_hash"] == manifest["content_hash"]
    assert _file_bytes(env, "datasets/flights_delay/ds=2013-01-04") == files_before


def _file_bytes(lake: Lake, directory: str) -> dict[str, bytes]:
    commit = lake.read_commit(directory)
    return {
        name: lake.read_bytes(path)
        for name, path in zip(commit.files, commit.file_paths(), strict=True)
        if name.endswith(".parquet")
    }
