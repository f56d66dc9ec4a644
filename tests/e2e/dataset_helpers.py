"""Shared set-up of the dataset DAG tests: real landed days, a 3-day test config, runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pendulum
import yaml

from mlpipeline.settings import PROJECT_ROOT

TRAIN_DAYS = (dt.date(2013, 1, 1), dt.date(2013, 1, 7))
GOLDEN_DAYS = (dt.date(2013, 1, 20), dt.date(2013, 1, 22))


def write_test_config(path: Path, **quality) -> Path:
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["dataset"].update({"window_days": 3, "sensor_poke_interval_s": 1, "sensor_timeout_s": 4})
    cfg["quality"].update(quality)
    cfg["training"].update({"n_trials": 5, "timeout_s": 120})
    cfg["golden"].update(
        {
            "default_start": GOLDEN_DAYS[0].isoformat(),
            "default_end": GOLDEN_DAYS[1].isoformat(),
            "default_sample_size": 1000,
            # The shared stack's later tests judge January challengers on the January golden set;
            # the refresh itself runs in test_model_monitoring and in `make demo`.
            "refresh_on_stale": False,
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


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
