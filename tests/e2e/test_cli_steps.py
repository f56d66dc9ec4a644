"""Every step by hand, without a scheduler: ``python -m mlpipeline <step>`` as a small team runs it.

Real data, the real Spark job (on a Spark Connect server named by ``SPARK_REMOTE``, as a team with
one runs it; the classic local run is tests/unit/test_build_dataset_job.py's), a real MLflow
server; no Airflow scheduler. The chain: land →
golden set → two dataset versions → train → promote → train → promote → rollback (dry run,
then for real) → monitor a day; and the refusals a person meets on the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mlpipeline.deployment import registry
from mlpipeline.lake import Lake
from mlpipeline.monitoring.alarms import read_alarms
from mlpipeline.settings import PROJECT_ROOT

pytestmark = pytest.mark.spark
MODEL = "flight_delay_cli"  # its own registered model: the MLflow server is shared by the session


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, mlflow_server, spark_connect_server) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["dataset"].update({"window_days": 3})
    cfg["training"].update(
        {"model_name": MODEL, "n_trials": 2, "timeout_s": 120, "reference_sample_rows": 500}
    )
    cfg["golden"].update(
        {"default_start": "2013-01-20", "default_end": "2013-01-22", "default_sample_size": 1000}
    )
    # The second model must be promoted for the rollback to have somewhere to go back to: the
    # policy's judgement is tested elsewhere (test_model_deployment, tests/unit/test_compare.py).
    cfg["deployment"].update({"min_uplift": -1.0, "slice_tolerance": 1.0, "max_p99_latency_ms": 1000.0})
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_")}
    env.update(
        {
            "MLP_LAKE_URI": f"file://{root / 'lake'}",
            "MLP_PIPELINE_CONFIG": str(root / "pipeline.yaml"),
            "MLP_STATE_DIR": str(root / "state"),
            "MLP_MLFLOW_TRACKING_URI": mlflow_server,
            "MLP_SERVING_PORT": "9",  # nothing serves here: the steps must not need a model server
            "SPARK_REMOTE": spark_connect_server,
        }
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlpipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _ok(env: dict[str, str], *args: str) -> dict:
    result = _cli(env, *args)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout[result.stdout.index("{") :])


def _lake(env: dict[str, str]) -> Lake:
    return Lake.from_uri(env["MLP_LAKE_URI"])


@pytest.mark.timeout(1800)  # a dozen CLI processes in a row, each importing Spark/MLflow/XGBoost
def test_every_step_by_hand(cli_env):
    env = cli_env
    assert _cli(env, "land", "--start", "2013-01-01", "--end", "2013-01-05").returncode == 0
    assert _cli(env, "land", "--start", "2013-01-20", "--end", "2013-01-22").returncode == 0

    golden = _ok(env, "build-dataset", "--golden")
    assert golden["version"] == "v1"
    for day in ("2013-01-04", "2013-01-05"):
        built = _ok(env, "build-dataset", "--day", day)
        assert built["version"] == day
        assert _lake(env).is_committed(f"datasets/flights_delay/ds={day}")

    first = _ok(env, "train", "--dataset-version", "2013-01-04", "--trials", "2")
    assert first["model"] == MODEL
    evaluated = _ok(env, "evaluate", "--version", first["version"])
    assert evaluated["decision"] == "promote"  # no champion yet
    assert _ok(env, "promote", "--version", first["version"])["to_version"] == first["version"]

    second = _ok(env, "train", "--trials", "2")  # no version named: the newest published one
    assert second["dataset_version"] == "2013-01-05"
    moved = _ok(env, "promote")  # no version named: alias challenger
    assert (moved["from_version"], moved["to_version"]) == (first["version"], second["version"])

    dry = _ok(env, "rollback", "--reason", "cli test: dry run", "--dry-run")
    assert dry["result"] == f"dry run: would move champion v{second['version']} -> v{first['version']}"
    history = registry.read_history(_lake(env), MODEL)
    assert [h["action"] for h in history] == ["promote", "promote"]

    back = _ok(env, "rollback", "--reason", "cli test: on-call")
    assert back["result"] == f"champion rolled back v{second['version']} -> v{first['version']}"
    last = registry.read_history(_lake(env), MODEL)[-1]
    assert (last["action"], last["to_version"], last["reasons"]) == (
        "rollback",
        first["version"],
        ["cli test: on-call"],
    )
    assert last["actor"].startswith("cli:")

    # No traffic was ever served here: monitoring says so with an alarm instead of judging.
    watched = _ok(env, "monitor", "--day", "2013-01-06")
    assert watched["decision"] == "no_traffic"
    alarms = read_alarms(_lake(env))
    assert any("no traffic logged for 2013-01-06" in a["what"] for a in alarms)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rollback", "--reason", "  "], 1, "a rollback needs a reason"),
        (["rollback", "--to", "99", "--reason", "cli test"], 1, "does not exist"),
        (["evaluate", "--version", "latest"], 2, "expected a registered version number"),
        (["build-dataset", "--day", "2013-02-30"], 2, "expected a date YYYY-MM-DD"),
        (["build-dataset", "--day", "2013-03-01"], 1, "raw"),  # nothing landed for that window
        (["train", "--dataset-version", "2013-03-01"], 1, "2013-03-01"),
    ],
)
def test_refusals_name_what_is_wrong(cli_env, args, code, message):
    result = _cli(cli_env, *args)
    assert result.returncode == code, f"{result.stdout}\n{result.stderr[-2000:]}"
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
