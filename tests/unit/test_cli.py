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
