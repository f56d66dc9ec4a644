"""End-to-end: run ``raw_landing`` with ``dag.test()`` and check what landed in the lake."""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from mlpipeline.data import nycflights13_source as source
from mlpipeline.data.landing import partition_dir
from mlpipeline.lake import Lake

pytestmark = pytest.mark.metadata


def run_for_day(dag, day: dt.date):
    """``dag.test()`` a manual run whose data interval is ``[day, day+1)``.

    A manual run infers the last complete interval before its date, so it is dated day+1
    (a backfill's run for the same interval is dated ``day``).
    """
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, tz="UTC").add(days=1))


@pytest.fixture
def raw_landing_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from mlpipeline.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "raw_landing.py"))
    assert bag.import_errors == {}
    return bag.dags["raw_landing"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_dag_lands_days(raw_landing_dag, backend, settings_env, tmp_path, request):
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        settings = settings_env(lake_uri=f"s3://{bucket}/dagtest-{tmp_path.name}")
    else:
        settings = settings_env(lake_uri=f"file://{tmp_path}/lake")
    days = [dt.date(2013, 2, 1), dt.date(2013, 2, 2)]
    for day in days:
        run = run_for_day(raw_landing_dag, day)
        assert run.state == "success", f"raw_landing for {day} ended {run.state}"
    lake = Lake.from_settings(settings)
    assert lake.committed_partitions("raw/flights") == ["2013-02-01", "2013-02-02"]
    for day in days:
        for table in source.TABLES:
            assert lake.is_committed(partition_dir(table, day)), (table, day)
        flights = lake.read_frame(partition_dir("flights", day))
        assert set(flights["day"]) == {day.day}
    # A rerun of the same day replaces the partition with the same content.
    before = lake.read_frame(partition_dir("flights", days[0]))
    run = run_for_day(raw_landing_dag, days[0])
    assert run.state == "success"
    assert lake.read_frame(partition_dir("flights", days[0])).equals(before)


def test_no_runs_past_the_data_end(raw_landing_dag, settings_env, tmp_path):
    settings = settings_env(lake_uri=f"file://{tmp_path}/lake")
    run = run_for_day(raw_landing_dag, dt.date(2014, 3, 1))
    assert run.get_task_instances() == []  # end_date = MLP_DATA_END: nothing is scheduled
    assert Lake.from_settings(settings).list_dirs("raw") == []


def test_landing_outside_the_replayed_data_fails_the_task(airflow_db, settings_env, tmp_path, capfd):
    from airflow.dag_processing.dagbag import DagBag

    from mlpipeline.settings import PROJECT_ROOT

    # Schedules that reach past the data (a misconfiguration) fail with a clear reason.
    settings = settings_env(lake_uri=f"file://{tmp_path}/lake", data_end="2014-12-31")
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "raw_landing.py")).dags["raw_landing"]
    for task in dag.tasks:
        task.retries = 0  # dag.test() would otherwise wait out the retry delays
    run = run_for_day(dag, dt.date(2014, 3, 1))
    assert run.state == "failed"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"land": "failed"}
    out, err = capfd.readouterr()
    assert "cannot land 2014-03-01: the replayed nycflights13 data covers" in out + err
    assert Lake.from_settings(settings).list_dirs("raw") == []
