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
