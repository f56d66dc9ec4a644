"""The embedded stack as local processes, as `make demo` / `make down` run it.

`demo` twice in a row (idempotent): the raw history landed in bulk, the traffic days backfilled
by the scheduler through the REST API, the lake checked. The stack is the shared one (``tests/stack_fixtures.py``): the
browser tests run on it afterwards, and ``down`` leaving no process behind is checked when
the session ends.
"""

from __future__ import annotations

import pytest
from demo_outcome import assert_demo_outcome
from stack_fixtures import ADMIN_PASSWORD, DemoStack, run_cli

from mlpipeline.data import datasets
from mlpipeline.lake import Lake

pytestmark = [pytest.mark.stack, pytest.mark.spark]


@pytest.mark.timeout(1800)
def test_demo_twice(demo_stack: DemoStack):
    """The demo on the shared stack (``down`` and its no-survivor check run at the session's end)."""
    env, first = demo_stack.env, demo_stack.first_demo
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert "Demo finished." in first.stdout
    assert f"login admin / {ADMIN_PASSWORD}" in first.stdout
    lake = Lake.from_uri(f"file://{demo_stack.lake_root}")
    assert_demo_outcome(lake, first.stdout)
    versions = ["2013-01-03", "2013-01-04"]
    hashes = {v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions}
    # The days that arrive during the demo went through raw_landing on the scheduler; the history
    # (the versions' windows: 2013-01-01..04) was the upstream's bulk archive, not Airflow runs.
    from mlpipeline.local.airflow_api import AirflowApi

    api = AirflowApi(demo_stack.airflow_url, "admin", ADMIN_PASSWORD)
    landed_by_airflow = {
        run["logical_date"][:10]: run["state"]
        for run in api.all_dag_runs("raw_landing")
        if run["logical_date"]
    }
    assert landed_by_airflow == {f"2013-01-{d:02d}": "success" for d in range(5, 11)}, landed_by_airflow
    status = run_cli(env, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running") == 7  # Airflow x4, MLflow, model server, Spark Connect

    second = run_cli(env, "demo")
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert "golden set flights_delay_golden/v1 exists (frozen): kept" in second.stdout
    assert {v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions} == hashes
