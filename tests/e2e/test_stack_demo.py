"""The embedded stack as local processes, as `make demo` / `make down` run it.

`demo` twice in a row (idempotent), the raw landing backfilled by the scheduler through the
REST API, the lake checked, and `down` leaving no process behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipeline.lake import Lake

pytestmark = pytest.mark.stack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlpipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_twice_then_down(tmp_path: Path):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLP_"))}
    env.update(
        {
            "MLP_STATE_DIR": str(state),
            "MLP_AIRFLOW_PORT": str(_free_port()),
            "MLP_MLFLOW_PORT": str(_free_port()),
            "MLP_DEMO_LANDING_START": "2013-01-01",
            "MLP_DEMO_LANDING_END": "2013-01-03",
            "MLP_ADMIN_PASSWORD": "demo-test-pass",
        }
    )
    try:
        first = _cli(env, "demo")
        assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
        assert "Demo finished." in first.stdout
        assert "login admin / demo-test-pass" in first.stdout
        lake = Lake.from_uri(f"file://{state / 'lake'}")
        assert lake.committed_partitions("raw/flights") == ["2013-01-01", "2013-01-02", "2013-01-03"]
        status = _cli(env, "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running") == 5

        second = _cli(env, "demo")
        assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
        assert lake.committed_partitions("raw/flights") == ["2013-01-01", "2013-01-02", "2013-01-03"]
    finally:
        pids = [json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.json")]
        down = _cli(env, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "airflow-scheduler" in down.stdout
    survivors = [pid for pid in pids if _group_alive(pid)]
    assert survivors == [], f"process groups still alive after down: {survivors}"
    assert _cli(env, "status").returncode == 3  # everything stopped


def _group_alive(pgid: int) -> bool:
    from mlpipeline.stack import _group_alive

    return _group_alive(pgid)
