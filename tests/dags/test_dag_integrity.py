"""Every DAG imports cleanly, follows the house rules, and parses without heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ["pyspark", "xgboost", "mlflow", "evidently", "great_expectations", "pandas", "sklearn", "optuna"]

#: dag_id -> expected task ids (the flow each DAG shows).
EXPECTED_TASKS = {
    "raw_landing": {"land"},
    "dataset_generation": {"wait_for_raw", "prepare", "build_dataset", "quality_gate", "publish"},
    "golden_dataset": {
        "check_version",
        "wait_for_raw",
        "prepare",
        "build_dataset",
        "quality_gate",
        "publish",
    },
    "model_training": {"check_dataset", "train_model", "register_challenger", "catch_up_needed", "catch_up"},
    "model_deployment": {"evaluate", "decide", "approve", "promote", "reject"},
    "model_rollback": {"validate_target", "roll_back"},
    "traffic_replay": {"replay_traffic", "land_delayed_labels"},
    "model_monitoring": {
        "wait_for_traffic",
        "check_drift",
        "check_quality",
        "check_serving",
        "decide",
        "choose_action",
        "healthy",
        "trigger_retraining",
        "trigger_rollback",
        "alarm_only",
        "golden_refresh_needed",
        "trigger_golden_refresh",
    },
}

pytestmark = pytest.mark.metadata


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags_and_tasks(dagbag):
    assert set(dagbag.dag_ids) == set(EXPECTED_TASKS)
    for dag_id, tasks in EXPECTED_TASKS.items():
        assert set(dagbag.dags[dag_id].task_ids) == tasks, dag_id


def test_house_rules(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} lacks doc_md"
        assert dag.doc_md.strip().startswith(f"# {dag_id}"), f"{dag_id}'s doc_md must start with its title"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
            callbacks = task.on_failure_callback or []
            assert any(type(c).__name__ == "AlarmNotifier" for c in callbacks), (
                f"{dag_id}.{task.task_id} raises no alarm when it fails"
            )
        assert dag.catchup is False or dag.schedule is None, f"{dag_id} must set catchup=False"


#: One process imports the SDK, then forks a child per DAG file (as the dag-processor does):
#: each child parses its file from that same start and reports what heavy modules it pulled in.
_PARSE_PROBE = """
import json, os, runpy, sys
import airflow.sdk
heavy, found = json.loads(sys.argv[1]), {}
for path in json.loads(sys.argv[2]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        before = set(sys.modules)
        try:
            runpy.run_path(path)
            out = sorted(m for m in heavy if m in sys.modules and m not in before)
        except BaseException as err:
            out = f"{type(err).__name__}: {err}"
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        found[path] = json.loads(pipe.read() or '"the parser died"')
    os.waitpid(pid, 0)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def parse_time_imports() -> dict[str, list[str] | str]:
    """For each DAG file: the heavy modules parsing it imported (or why it did not parse)."""
    files = [str(p) for p in DAG_FILES]
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, json.dumps(HEAVY), json.dumps(files)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_parse_time(path: Path, parse_time_imports):
    assert parse_time_imports[str(path)] == [], f"{path.name} imports heavy modules at parse time"


def test_metadata_db_is_the_requested_backend(request, airflow_db):
    from airflow import settings

    expected = {"sqlite": "sqlite", "postgres": "postgresql"}[request.config.getoption("--metadata-db")]
    assert settings.engine.dialect.name == expected


def test_every_dag_gets_a_deadline_alert_when_enabled():
    """MLP_DEADLINE_ALERTS=true (off by default: apache/airflow#58560) gives every DAG its alert."""
    probe = (
        "import json; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
        "print(json.dumps({d: bool(dag.deadline) for d, dag in bag.dags.items()}))"
    )
    import os

    env = {**os.environ, "MLP_DEADLINE_ALERTS": "true"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    flags = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(flags) == set(EXPECTED_TASKS)
    assert all(flags.values()), flags
