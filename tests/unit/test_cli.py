"""The CLI keeps piped and logged output readable: MLflow's progress bars off when not a terminal."""

from __future__ import annotations

import pytest

from mlpipeline.__main__ import quiet_progress_bars

VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def test_progress_bars_off_when_not_interactive(monkeypatch: pytest.MonkeyPatch):
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    monkeypatch.delenv(VAR, raising=False)
    quiet_progress_bars(interactive=False)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False


def test_progress_bars_kept_in_a_terminal_and_an_explicit_choice_wins(monkeypatch: pytest.MonkeyPatch):
    import os

    monkeypatch.delenv(VAR, raising=False)
    quiet_progress_bars(interactive=True)
    assert VAR not in os.environ
    monkeypatch.setenv(VAR, "true")
    quiet_progress_bars(interactive=False)
    assert os.environ[VAR] == "true"


def test_a_distributed_lake_whose_s3_is_down_is_one_clear_line(tmp_path):
    import os
    import subprocess
    import sys

    from ports import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLP_", "AIRFLOW_CONN_AWS"))}
    env |= {"MLP_STACK": "distributed", "MLP_STATE_DIR": str(tmp_path), "MLP_S3_PORT": str(free_port())}
    env["AWS_MAX_ATTEMPTS"] = "1"  # no retries against a closed port
    result = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "land", "--start", "2013-01-01", "--end", "2013-01-01"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: the lake's S3 endpoint is not reachable"), result.stderr[-2000:]
    assert "lake s3://mlpipeline/lake: start the stack (make up)" in result.stderr
    assert "Traceback" not in result.stderr
