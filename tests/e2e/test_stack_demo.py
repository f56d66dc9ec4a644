"""The embedded stack as local processes, as `make demo` / `make down` run it.

`demo` twice in a row (idempotent), the raw landing backfilled by the scheduler through the
REST API, the lake checked. The stack is the shared one (``tests/stack_fixtures.py``): the
browser tests run on it afterwards, and ``down`` leaving no process behind is checked when
the session ends.
"""

from __future__ import annotations

import pytest
from stack_fixtures import ADMIN_PASSWORD, DemoStack, run_cli

from mlpipeline.data import datasets
from mlpipeline.deployment import registry
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
    landed = lake.committed_partitions("raw/flights")
    assert landed == [
        *(f"2013-01-{d:02d}" for d in range(1, 11)),  # versions' windows + six days of traffic
        "2013-01-20", "2013-01-21", "2013-01-22",  # golden range
        "2013-07-13", "2013-07-14", "2013-07-15",  # the drift scenario's window
        "2013-07-16",  # the day after it: served by the July model when it was promoted
    ]  # fmt: skip
    versions = lake.committed_partitions("datasets/flights_delay", key="ds")
    assert versions == ["2013-01-03", "2013-01-04", "2013-07-15"]  # a REST backfill + the drift retrain
    # Versions published back to back (a REST backfill, then the retrain): whatever Airflow
    # batched, each one was trained or superseded by a newer one; nothing is left pending.
    for version in versions:
        entry = lake.read_json(f"training/flight_delay/ds={version}/ledger.json")
        assert entry["status"] in ("trained", "superseded"), entry
        if entry["status"] == "superseded":
            assert entry["by"] > version
    assert "PENDING" not in first.stdout
    versions = versions[:2]
    assert "champion        : flight_delay v" in first.stdout
    # Normal days: three days of replayed traffic, one monitoring run with a recorded decision.
    record = lake.read_json("monitoring/flight_delay/dt=2013-01-07/record.json")
    assert record["decision"] in ("healthy", "alarm_only"), record["reasons"]
    assert f"2013-01-07: decision {record['decision'].upper()}" in first.stdout
    assert lake.exists("reports/drift/flight_delay/dt=2013-01-07/report.html")
    # Bad deployment: the forced degraded model is rolled back by monitoring, automatically.
    history = registry.read_history(lake, "flight_delay")
    forced = next(h for h in history if h["actor"] == "demo:scenario")
    rollback = next(h for h in history if h["action"] == "rollback")
    assert (rollback["from_version"], rollback["to_version"]) == (
        forced["to_version"],
        forced["from_version"],
    )
    assert rollback["reasons"][0].startswith("model_monitoring 2013-01-10")
    assert "model_rollback success" in first.stdout
    # Drift: July traffic retrains on the newest data; a challenger trained on it appears.
    drift = lake.read_json("monitoring/flight_delay/dt=2013-07-15/record.json")
    assert drift["decision"] == "retrain", drift["reasons"]
    assert lake.is_committed("datasets/flights_delay/ds=2013-07-15")
    assert "new challenger v" in first.stdout
    assert lake.is_committed("golden/flights_delay_golden/v1")
    # July traffic finds the January golden set stale: an alarm naming the refresh range (the
    # refresh itself is off in this stack's settings: test_model_monitoring and `make demo` run it).
    stale = next(f for f in drift["findings"] if f["check"] == "golden")
    assert stale["status"] == "breach", stale
    assert stale["figures"]["refresh"] == {"start": "2013-06-29", "end": "2013-07-12"}
    assert not lake.is_committed("golden/flights_delay_golden/v2")
    hashes = {v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions}
    status = run_cli(env, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running") == 7  # Airflow x4, MLflow, model server, Spark Connect

    second = run_cli(env, "demo")
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert "golden set flights_delay_golden/v1 exists (frozen): kept" in second.stdout
    assert {v: datasets.read_manifest(lake, "flights_delay", v)["content_hash"] for v in versions} == hashes
