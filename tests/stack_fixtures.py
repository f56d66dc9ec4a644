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
import time
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


class BackgroundDemo:
    """``python -m mlpipeline demo`` on a fresh state folder, started as soon as the session
    knows it will run stack tests: the stack comes up and the demo runs while the other tests
    do (most of both is waiting on schedulers and servers); the stack tests wait for it."""

    def __init__(self, root: Path, profile: str = "embedded") -> None:
        from e2e.dataset_helpers import write_test_config

        self.root = root
        self.profile = profile
        self.state = root / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLP_"))}
        self.config = write_test_config(root / "pipeline.yaml")
        env.update(
            {
                "MLP_STATE_DIR": str(self.state),
                "MLP_AIRFLOW_PORT": str(free_port()),
                "MLP_MLFLOW_PORT": str(free_port()),
                "MLP_SERVING_PORT": str(free_port()),
                "MLP_SPARK_CONNECT_PORT": str(free_port()),
                # A 3-day window and golden range keep the Spark jobs short; two versions.
                "MLP_PIPELINE_CONFIG": str(self.config),
                "MLP_DEMO_FIRST_VERSION": "2013-01-03",
                "MLP_DEMO_LAST_VERSION": "2013-01-04",
                "MLP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            }
        )
        if profile == "distributed":
            env.update(distributed_environment())
        self.env = env
        self.stdout_path, self.stderr_path = root / "demo.stdout", root / "demo.stderr"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlpipeline", "demo"], env=env, stdout=out, stderr=err, text=True
            )
        self.started = time.monotonic()
        self.claimed = False

    def result(self, timeout_s: float = 1800) -> subprocess.CompletedProcess:
        """Wait for the demo (``timeout_s`` from its start); its output as ``run_cli`` returns it."""
        try:
            self.proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.stdout_path.read_text(), self.stderr_path.read_text()
        )

    def abandon(self) -> None:
        """The stack tests never ran (deselected, interrupted): stop the demo and the stack."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        run_cli(self.env, "down", timeout=120)


#: Redis database of the test session's distributed stack (emptied before it starts).
TEST_REDIS_DB = 13


def distributed_environment() -> dict[str, str]:
    """The distributed profile on free ports, its own databases and its own Redis database."""
    import uuid

    import redis

    redis_url = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    return {
        "MLP_STACK": "distributed",
        "MLP_DATABASE_PREFIX": f"mlp_stack_{uuid.uuid4().hex[:8]}",
        "MLP_REDIS_URL": redis_url,
        "MLP_S3_PORT": str(free_port()),
        "MLP_SPARK_MASTER_PORT": str(free_port()),
    }


_BACKGROUND: dict[str, BackgroundDemo] = {}


def start_background_demo(root: Path, profile: str = "embedded") -> None:
    """Start a shared stack's demo now (once per session and profile; not when attaching)."""
    attach = {"embedded": "TEST_ATTACH_STACK", "distributed": "TEST_ATTACH_DISTRIBUTED"}[profile]
    if profile not in _BACKGROUND and not os.environ.get(attach):
        root.mkdir(parents=True, exist_ok=True)
        _BACKGROUND[profile] = BackgroundDemo(root, profile)


def stop_unclaimed_demo() -> None:
    for demo in _BACKGROUND.values():
        if not demo.claimed:
            demo.abandon()
            if demo.profile == "distributed":
                drop_stack_databases(demo.env["MLP_DATABASE_PREFIX"])


def drop_stack_databases(prefix: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        for purpose in ("airflow", "mlflow"):
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}_{purpose}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory) -> Iterator[DemoStack]:
    """The background demo's stack (started at collection, ``tests/conftest.py``); ``down`` at
    the end of the session, checking that no process survives it."""
    attach = os.environ.get("TEST_ATTACH_STACK")
    if attach:
        # Development only: run the stack tests against a stack that is already up (its MLP_*
        # settings in the file named here); no demo, no down.
        yield _attached(Path(attach))
        return
    yield from _claim(tmp_path_factory, "embedded")


@pytest.fixture(scope="module")
def distributed_stack(tmp_path_factory) -> Iterator[DemoStack]:
    """The distributed profile's background demo (``tests/conftest.py``); ``down`` after its
    module's tests, checking that no process survives it; its databases dropped."""
    attach = os.environ.get("TEST_ATTACH_DISTRIBUTED")
    if attach:  # development only, as TEST_ATTACH_STACK
        yield _attached(Path(attach))
        return
    try:
        yield from _claim(tmp_path_factory, "distributed")
    finally:
        drop_stack_databases(_BACKGROUND["distributed"].env["MLP_DATABASE_PREFIX"])


def _claim(tmp_path_factory, profile: str) -> Iterator[DemoStack]:
    from mlpipeline.local.stack import _group_alive

    # No-op when collection started it.
    start_background_demo(tmp_path_factory.mktemp(f"stack-{profile}"), profile)
    demo = _BACKGROUND[profile]
    demo.claimed = True
    first = demo.result(timeout_s=2400)
    env, state = demo.env, demo.state
    if first.returncode != 0:
        first.stdout += "\n" + failed_task_logs(state)
    try:
        yield DemoStack(env=env, state=state, pipeline_config=demo.config, first_demo=first)
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
    # The demo's output, when it was kept next to the settings file.
    output = env_file.with_name("demo.out")
    stdout = output.read_text() if output.exists() else "(attached to a running stack)"
    done = subprocess.CompletedProcess(["demo"], 0, stdout=stdout, stderr="")
    return DemoStack(
        env=env,
        state=Path(values["MLP_STATE_DIR"]),
        pipeline_config=Path(values["MLP_PIPELINE_CONFIG"]),
        first_demo=done,
    )
