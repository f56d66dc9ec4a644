"""The scheduler's preload of heavy libraries (plugins/mlpipeline_airflow/warm_tasks.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlpipeline_airflow import warm_tasks

from mlpipeline.settings import Settings


def test_modules_come_from_the_variable_and_empty_means_off():
    assert warm_tasks.modules_to_preload({"MLP_PRELOAD_MODULES": " pandas, ,mlflow.xgboost "}) == [
        "pandas",
        "mlflow.xgboost",
    ]
    assert warm_tasks.modules_to_preload({"MLP_PRELOAD_MODULES": ""}) == []
    assert warm_tasks.modules_to_preload({}) == []


def test_only_the_processes_tasks_fork_from_preload():
    assert warm_tasks.is_scheduler(["/venv/bin/airflow", "scheduler"])
    assert warm_tasks.is_scheduler(["/venv/bin/airflow", "celery", "worker", "--concurrency", "2"])
    for argv in (
        ["/venv/bin/airflow", "celery", "flower"],
        ["/venv/bin/airflow", "api-server"],
        ["/venv/bin/airflow", "dag-processor"],
        ["/venv/bin/airflow", "triggerer"],
        ["/venv/bin/airflow"],
        ["pytest", "scheduler"],
    ):
        assert not warm_tasks.is_scheduler(argv), argv


def test_a_module_that_cannot_import_is_skipped_not_raised():
    took = warm_tasks.preload(["json", "no_such_module_mlp", "csv"])
    assert set(took) == {"json", "csv"}


def test_the_scheduler_preloads_once(monkeypatch):
    """The plugin manager runs airflow_local_settings.py a second time (and in every forked task)."""
    monkeypatch.setattr(warm_tasks.sys, "argv", ["/venv/bin/airflow", "scheduler"])
    monkeypatch.setenv("MLP_PRELOAD_MODULES", "json,csv")
    monkeypatch.setattr(warm_tasks, "_preloaded", None)
    assert set(warm_tasks.warm_scheduler() or {}) == {"json", "csv"}
    assert warm_tasks.warm_scheduler() is None
    monkeypatch.setattr(warm_tasks.sys, "argv", ["/venv/bin/airflow", "triggerer"])
    monkeypatch.setattr(warm_tasks, "_preloaded", None)
    assert warm_tasks.warm_scheduler() is None


def test_the_default_preload_starts_no_thread_so_forking_stays_safe():
    """Every default module, imported in a fresh process: still one thread (a fork copies only the
    forking thread, so a thread started by an import would leave its locks held in each task)."""
    names = warm_tasks.modules_to_preload({"MLP_PRELOAD_MODULES": Settings().preload_modules})
    assert "pyspark.sql.connect.session" in names  # the in-task Spark Connect client (spark_job.py)
    probe = (
        "import sys, threading\n"
        "from mlpipeline_airflow import warm_tasks\n"
        "took = warm_tasks.preload(sys.argv[1:])\n"
        "print(len(took), threading.active_count(), sorted(t.name for t in threading.enumerate()))\n"
    )
    plugins = str(Path(warm_tasks.__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", probe, *names],
        capture_output=True, text=True, check=True, timeout=300, env={**os.environ, "PYTHONPATH": plugins},
    )  # fmt: skip
    imported, threads, _names = result.stdout.split(" ", 2)
    assert int(imported) == len(names), result.stderr[-2000:]
    assert int(threads) == 1, result.stdout
