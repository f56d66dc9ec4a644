"""Settings: embedded defaults, env overrides, clear errors for unknown or malformed values."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from mlpipeline.settings import PROJECT_ROOT, Settings, SettingsError, load_settings


def test_defaults_run_on_one_machine():
    settings = load_settings({})
    assert settings.state_dir == PROJECT_ROOT / ".local"
    assert settings.resolved_lake_uri == f"file://{PROJECT_ROOT / '.local' / 'lake'}"
    assert settings.airflow_url == "http://127.0.0.1:8080"
    assert settings.data_start == dt.date(2013, 1, 1)
    assert settings.parallelism == 4


def test_environment_overrides_and_types():
    settings = load_settings(
        {"MLP_AIRFLOW_PORT": "18080", "MLP_LAKE_URI": "s3://bucket/prefix/", "MLP_DATA_END": "2013-06-30"}
    )
    assert settings.airflow_port == 18080
    assert settings.resolved_lake_uri == "s3://bucket/prefix"
    assert settings.data_end == dt.date(2013, 6, 30)


def test_unknown_variable_is_named():
    with pytest.raises(SettingsError, match="MLP_LAKE_URL"):
        load_settings({"MLP_LAKE_URL": "file:///tmp/x"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MLP_AIRFLOW_PORT": "eighty"}, r"MLP_AIRFLOW_PORT='eighty'.*expected an integer"),
        ({"MLP_AIRFLOW_PORT": "70000"}, r"MLP_AIRFLOW_PORT='70000'.*le 65535"),
        ({"MLP_DATA_START": "01/02/2013"}, r"MLP_DATA_START='01/02/2013'.*YYYY-MM-DD"),
        ({"MLP_LAKE_URI": "hdfs://x"}, r"MLP_LAKE_URI='hdfs://x'.*file:///absolute/path or s3://"),
        ({"MLP_ADMIN_USER": "a:b"}, r"MLP_ADMIN_USER"),
        ({"MLP_DATA_START": "2013-05-01", "MLP_DATA_END": "2013-04-01"}, r"MLP_DATA_START .* is after"),
    ],
)
def test_malformed_values_name_the_variable_and_form(env, expected):
    with pytest.raises(SettingsError, match=expected):
        load_settings(env)


def test_env_example_lists_every_setting():
    text = (PROJECT_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(MLP_[A-Z0-9_]+)=", text, flags=re.M))
    expected = {f"MLP_{name.upper()}" for name in Settings.model_fields}
    assert expected == listed, f"missing: {expected - listed}; stale: {listed - expected}"


def test_cli_fails_at_start_naming_the_variable(tmp_path: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLP_PARALLELISM": "zero"}
    result = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "settings"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "MLP_PARALLELISM='zero'" in result.stderr
    assert "Traceback" not in result.stderr
