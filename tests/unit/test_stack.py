"""The embedded stack's process handling: clear start errors, exact stop."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from mlpipeline.local import stack
from mlpipeline.settings import load_settings


@pytest.fixture
def paths(tmp_path: Path) -> stack.StackPaths:
    paths = stack.StackPaths(tmp_path / "state")
    paths.ensure()
    return paths


def sleeper(name: str, port: int | None = None) -> stack.Service:
    # A parent that also starts a child: `down` must stop the whole process group.
    code = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
    )
    return stack.Service(name, [sys.executable, "-c", code], port=port)


def test_port_taken_names_service_and_port(paths, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
        with pytest.raises(stack.StackError, match=rf"web: port 127\.0\.0\.1:{port} is taken"):
            stack.start(sleeper("web", port), paths, settings)


def test_start_is_idempotent_and_down_stops_the_group(paths, tmp_path):
    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    service = sleeper("sleepy")
    first = stack.start(service, paths, settings)
    second = stack.start(service, paths, settings)
    assert first.pid == second.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _children(first.pid):
        time.sleep(0.1)
    assert _children(first.pid), "the service's child process did not start"
    assert stack.down(settings, grace_s=5) == ["sleepy"]
    assert not stack._group_alive(first.pid)
    assert stack.down(settings) == []


def test_down_leaves_a_reused_pid_alone(paths, tmp_path):
    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    # A stale pid file naming a live process that this stack did not start (pid reuse).
    record = {"pid": os.getpid(), "start_ticks": 1, "argv": ["something"]}
    (paths.run_dir / "ghost.json").write_text(__import__("json").dumps(record))
    assert stack.down(settings, grace_s=1) == []
    assert not (paths.run_dir / "ghost.json").exists()


def test_failed_start_names_process_and_log(paths, tmp_path):
    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    service = stack.Service(
        "broken", [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
    )
    stack.start(service, paths, settings)
    time.sleep(1)
    with pytest.raises(
        stack.StackError, match=r"broken exited during start-up; its log is .*broken\.log"
    ) as err:
        stack.wait_healthy(service, paths, timeout_s=5)
    assert "boom: bad config" in str(err.value)


def test_health_timeout_names_the_url(paths, tmp_path):
    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    service = stack.Service(
        "mute",
        [sys.executable, "-c", "import time; time.sleep(30)"],
        health_url="http://127.0.0.1:9/health",
    )
    stack.start(service, paths, settings)
    try:
        with pytest.raises(
            stack.StackError, match=r"mute not healthy after 2s \(http://127\.0\.0\.1:9/health"
        ):
            stack.wait_healthy(service, paths, timeout_s=2)
    finally:
        stack.down(settings, grace_s=2)


def test_secrets_are_generated_once_and_login_is_fixed(paths, tmp_path):
    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    first = stack.load_or_create_secrets(paths, settings)
    again = stack.load_or_create_secrets(paths, settings)
    assert first == again
    assert __import__("json").loads(paths.passwords_file.read_text()) == {"admin": first["admin_password"]}
    chosen = load_settings({"MLP_STATE_DIR": str(tmp_path / "state"), "MLP_ADMIN_PASSWORD": "s3cret-pass"})
    assert stack.load_or_create_secrets(paths, chosen)["admin_password"] == "s3cret-pass"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_revive_restarts_a_dead_service_but_not_a_stopped_one(paths, tmp_path, monkeypatch):
    import signal

    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    crashed, stopped = sleeper("crashed"), sleeper("stopped")
    monkeypatch.setattr(stack, "services", lambda _settings, _paths: [crashed, stopped])
    first = stack.start(crashed, paths, settings)
    stack.start(stopped, paths, settings)
    stack._pid_file(paths, stopped).unlink()  # what `down` leaves: no pid file
    os.kill(first.pid, signal.SIGKILL)  # the scheduler crashing; a zombie until reaped
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stack._start_ticks(first.pid) is not None:
        time.sleep(0.1)
    assert stack.revive(settings) == ["crashed"]
    again = stack.running(paths, crashed)
    assert again is not None
    assert again.pid != first.pid
    assert stack.revive(settings) == []  # alive now: nothing to do
    stack.down(settings, grace_s=5)


# ------------------------------------------------------------------ the distributed profile


def distributed(tmp_path: Path, **values: str):
    env = {"MLP_STATE_DIR": str(tmp_path / "state"), "MLP_STACK": "distributed", **values}
    return load_settings(env)


def test_distributed_profile_is_the_compose_topology(tmp_path):
    settings = distributed(tmp_path, MLP_CELERY_WORKERS="2", MLP_DATABASE_PREFIX="p1")
    services = {s.name: s for s in stack.services(settings, stack.StackPaths(settings.state_dir))}
    assert list(services) == [
        "s3", "spark-master", "spark-worker-1", "spark-worker-2", "mlflow", "airflow-api-server",
        "airflow-scheduler", "airflow-worker-1", "airflow-worker-2", "model-server",
        "airflow-dag-processor", "airflow-triggerer",
    ]  # fmt: skip
    worker = services["airflow-worker-2"]
    assert worker.argv[1:3] == ["celery", "worker"]
    assert worker.env[stack.WORKER_NAME_ENV] == "worker-2"
    env = services["airflow-scheduler"].env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@127.0.0.1:5432/p1_airflow")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == settings.redis_url
    assert env["MLP_LAKE_URI"] == "s3://mlpipeline/lake"
    assert env["MLP_PRELOAD_MODULES"] == ""  # the workers run the tasks, so they preload
    assert worker.env["MLP_PRELOAD_MODULES"]
    assert stack.spark_connection(settings) == {
        "conn_type": "spark",
        "host": "spark://127.0.0.1",
        "port": 7077,
    }
    mlflow = services["mlflow"].argv
    assert mlflow[mlflow.index("--backend-store-uri") + 1].endswith("/p1_mlflow")
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "s3://mlpipeline/mlflow"
    assert services["mlflow"].env["MLFLOW_S3_ENDPOINT_URL"] == settings.resolved_s3_endpoint


def test_an_external_s3_endpoint_starts_no_s3_server(tmp_path):
    settings = distributed(tmp_path, MLP_S3_ENDPOINT_URL="https://s3.eu-west-1.amazonaws.com")
    names = [s.name for s in stack.services(settings, stack.StackPaths(settings.state_dir))]
    assert "s3" not in names


def test_one_state_dir_holds_one_kind_of_stack(tmp_path):
    embedded = load_settings({"MLP_STATE_DIR": str(tmp_path / "state")})
    paths = stack.StackPaths(embedded.state_dir)
    paths.ensure()
    stack.check_profile(embedded, paths)
    with pytest.raises(stack.StackError, match=r"holds a embedded stack's state"):
        stack.check_profile(distributed(tmp_path), paths)
    assert stack.as_recorded(distributed(tmp_path)).stack == "embedded"  # status/down name its services


def test_unreachable_postgres_and_redis_are_named(tmp_path):
    closed = _closed_port()
    with pytest.raises(stack.StackError, match=rf"PostgreSQL at postgresql://postgres@127.0.0.1:{closed}"):
        stack.ensure_databases(
            distributed(tmp_path, MLP_POSTGRES_URL=f"postgresql://postgres@127.0.0.1:{closed}")
        )
    with pytest.raises(stack.StackError, match=rf"Redis at redis://127.0.0.1:{closed}/0 is not reachable"):
        stack.check_redis(distributed(tmp_path, MLP_REDIS_URL=f"redis://127.0.0.1:{closed}/0"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
