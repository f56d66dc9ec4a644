"""The embedded stack as local processes, as `make demo` / `make down` run it.

`demo` twice in a row (idempotent), the raw landing backfilled by the scheduler through the
REST API, the lake checked, and `down` leaving no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_helpers import write_test_config
from ports import free_port

from mlpipeline.data import datasets
from mlpipeline.deployment import registry
from mlpipeline.lake import Lake

pytestmark = [pytest.mark.stack, pytest.mark.spark]


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlpipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(1800)
def test_demo_twice_then_down(tmp_path: Path):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLP_"))}
    env.update(
        {
            "MLP_STATE_DIR": str(state),
            "MLP_AIRFLOW_PORT": str(free_port()),
            "MLP_MLFLOW_PORT": str(free_port()),
            "MLP_SERVING_PORT": str(free_port()),
            # A 3-day window and golden range keep the Spark jobs short; 5 versions as in the issue.
            "MLP_PIPELINE_CONFIG": str(write_test_config(tmp_path / "pipeline.yaml")),
            "MLP_DEMO_FIRST_VERSION": "2013-01-03",
            "MLP_DEMO_LAST_VERSION": "2013-01-04",
            "MLP_ADMIN_PASSWORD": "demo-test-pass",
        }
    )
    try:
        first = _cli(env, "demo")
        assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{_failed_task_logs(state)}"
        assert "Demo finished." in first.stdout
        assert "login admin / demo-test-pass" in first.stdout
        lake = Lake.from_uri(f"file://{state / 'lake'}")
        landed = lake.committed_partitions("raw/flights")
        assert landed == [
            *(f"2013-01-{d:02d}" for d in range(1, 11)),  # versions' windows + six days of traffic
            "2013-01-20", "2013-01-21", "2013-01-22",  # golden range
            "2013-07-13", "2013-07-14", "2013-07-15",  # the drift scenario's window
        ]  # fmt: skip
        versions = lake.committed_partitions("datasets/flights_delay", key="ds")
        assert versions == ["2013-01-03", "2013-01-04", "2013-07-15"]  # a REST backfill + the drift retrain
        versions = versions[:2]
        assert "champion        : flight_delay v" in first.stdout
        # Normal days: three days of replayed traffic, one monitoring run with a recorded decision.
        record = lake.read_json("monitoring/flight_delay/dt=2013-01-07/record.json")
        assert record["decision"] in ("healthy", "alarm_only"), record["reasons"]
        assert f"2013-01-07: decision {record['decision'].upper()}" in first.stdout
        assert lake.exists("reports/drift/flight_delay/dt=2013-01-07/report.html")
        # Bad deployment: the forced degraded model is rolled back by monitoring, automatically.
        history = registry.read_history(lake, "flight_delay")
        forced = next(h for h in history if h["actor"] == "demo:scenario")
        rollback = next(h for h in history if h["action"] == "rollback")
        assert (rollback["from_version"], rollback["to_version"]) == (
            forced["to_version"],
            forced["from_version"],
        )
        assert rollback["reasons"][0].startswith("model_monitoring 2013-01-10")
        assert "model_rollback success" in first.stdout
        # Drift: July traffic retrains on the newest data; a challenger trained on it appears.
        drift = lake.read_json("monitoring/flight_delay/dt=2013-07-15/record.json")
        assert drift["decision"] == "retrain", drift["reasons"]
        assert lake.is_committed("datasets/flights_delay/ds=2013-07-15")
        assert "new challenger v" in first.stdout
        assert lake.is_committed("golden/flights_delay_golden/v1")
        hashes = {v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions}
        status = _cli(env, "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running") == 6

        second = _cli(env, "demo")
        assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
        assert "golden set flights_delay_golden/v1 exists (frozen): kept" in second.stdout
        assert {
            v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions
        } == hashes
    finally:
        pids = [json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.json")]
        down = _cli(env, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "airflow-scheduler" in down.stdout
    survivors = [pid for pid in pids if _group_alive(pid)]
    assert survivors == [], f"process groups still alive after down: {survivors}"
    assert _cli(env, "status").returncode == 3  # everything stopped


def _failed_task_logs(state: Path) -> str:
    """The end of the newest task logs, to see why a run failed."""
    logs = sorted((state / "airflow" / "logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)[
        -3:
    ]
    return "\n".join(
        f"==> {p} <==\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]) for p in logs
    )


def _group_alive(pgid: int) -> bool:
    from mlpipeline.local.stack import _group_alive

    return _group_alive(pgid)
