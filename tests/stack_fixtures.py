"""One running embedded stack for every test that needs it: started by ``make demo``'s own path.

The stack tests (`-m stack`) are moved to the end of the session (``tests/conftest.py``), so the
stack starts once, the demo runs once on it, the browser tests click through the same stack, and
``down`` runs when the session ends — asserting that no process survives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ports import free_port

ADMIN_PASSWORD = "demo-test-pass"


@dataclass
class DemoStack:
    """The running stack: its environment, state folder and the first ``demo``'s output."""

    env: dict[str, str]
    state: Path
    pipeline_config: Path
    first_demo: subprocess.CompletedProcess

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.env['MLP_AIRFLOW_PORT']}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.env['MLP_SERVING_PORT']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.env['MLP_MLFLOW_PORT']}"

    @property
    def lake_root(self) -> Path:
        return self.state / "lake"

    def require_demo(self) -> None:
        if self.first_demo.returncode != 0:
            pytest.fail(
                f"the demo failed on the shared stack (see test_stack_demo):\n{self.first_demo.stdout[-3000:]}"
            )


def run_cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlpipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def failed_task_logs(state: Path) -> str:
    """The end of the newest task logs, to see why a run failed."""
    logs = sorted((state / "airflow" / "logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)[
        -3:
    ]
    return "\n".join(
        f"==> {p} <==\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]) for p in logs
    )


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory) -> Iterator[DemoStack]:
    """``python -m mlpipeline demo`` once on a fresh state folder; ``down`` at the end of the session."""
    from e2e.dataset_helpers import write_test_config

    from mlpipeline.local.stack import _group_alive

    attach = os.environ.get("TEST_ATTACH_STACK")
    if attach:
        # Development only: run the stack tests against a stack that is already up (its MLP_*
        # settings in the file named here); no demo, no down.
        yield _attached(Path(attach))
        return
    tmp_path = tmp_path_factory.mktemp("stack")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLP_"))}
    config = write_test_config(tmp_path / "pipeline.yaml")
    env.update(
        {
            "MLP_STATE_DIR": str(state),
            "MLP_AIRFLOW_PORT": str(free_port()),
            "MLP_MLFLOW_PORT": str(free_port()),
            "MLP_SERVING_PORT": str(free_port()),
            "MLP_SPARK_CONNECT_PORT": str(free_port()),
            # A 3-day window and golden range keep the Spark jobs short; 5 versions as in the issue.
            "MLP_PIPELINE_CONFIG": str(config),
            "MLP_DEMO_FIRST_VERSION": "2013-01-03",
            "MLP_DEMO_LAST_VERSION": "2013-01-04",
            "MLP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
    )
    first = run_cli(env, "demo", timeout=1800)
    if first.returncode != 0:
        first.stdout += "\n" + failed_task_logs(state)
    try:
        yield DemoStack(env=env, state=state, pipeline_config=config, first_demo=first)
    finally:
        pids = [json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.json")]
        down = run_cli(env, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "airflow-scheduler" in down.stdout
    survivors = [pid for pid in pids if _group_alive(pid)]
    assert survivors == [], f"process groups still alive after down: {survivors}"
    assert run_cli(env, "status").returncode == 3  # everything stopped


def _attached(env_file: Path) -> DemoStack:
    from mlpipeline.local.envfile import parse_env_file

    values = parse_env_file(env_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLP_"))} | values
    done = subprocess.CompletedProcess(["demo"], 0, stdout="(attached to a running stack)", stderr="")
    return DemoStack(
        env=env,
        state=Path(values["MLP_STATE_DIR"]),
        pipeline_config=Path(values["MLP_PIPELINE_CONFIG"]),
        first_demo=done,
    )
