"""What one `make demo` run leaves in the lake and the registry, on either stack profile.

The test config's demo (``tests/stack_fixtures.py``): versions 2013-01-03 and 2013-01-04,
normal days, a forced bad deployment rolled back by monitoring, a July drift retrain.
"""

from __future__ import annotations

from mlpipeline.deployment import registry
from mlpipeline.lake import Lake


def assert_demo_outcome(
    lake: Lake, stdout: str, normal_day_decisions=("healthy", "alarm_only", "rollback")
) -> None:
    """Every step's records: raw days, versions and their ledger, monitoring, rollback, drift.

    ``normal_day_decisions``: what 2013-01-07's monitoring may decide. The test config's models
    are trained on 3-day windows; their calibration on a normal day sits at the 0.12 limit
    (0.123 seen on both profiles), where a rollback of the fresh champion is monitoring doing
    its job. ``make demo``'s 28-day models are well inside it; the forced bad model's rollback
    (2013-01-10) is asserted whatever 2013-01-07 decided.
    """
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
    assert "PENDING" not in stdout
    assert "champion        : flight_delay v" in stdout
    # Normal days: three days of replayed traffic, one monitoring run with a recorded decision.
    record = lake.read_json("monitoring/flight_delay/dt=2013-01-07/record.json")
    assert record["decision"] in normal_day_decisions, record["reasons"]
    assert f"2013-01-07: decision {record['decision'].upper()}" in stdout
    assert lake.exists("reports/drift/flight_delay/dt=2013-01-07/report.html")
    history = registry.read_history(lake, "flight_delay")
    if record["decision"] == "rollback":  # the fresh champion breached: monitoring rolled it back itself
        assert any(
            h["action"] == "rollback" and h["reasons"][0].startswith("model_monitoring 2013-01-07")
            for h in history
        ), history
    # Bad deployment: the forced degraded model is rolled back by monitoring, automatically.
    forced = next(h for h in history if h["actor"] == "demo:scenario")
    rollback = next(
        h for h in history if h["action"] == "rollback" and h["from_version"] == forced["to_version"]
    )
    assert (rollback["from_version"], rollback["to_version"]) == (
        forced["to_version"],
        forced["from_version"],
    )
    assert rollback["reasons"][0].startswith("model_monitoring 2013-01-10")
    assert "model_rollback success" in stdout
    # Drift: July traffic retrains on the newest data; a challenger trained on it appears.
    drift = lake.read_json("monitoring/flight_delay/dt=2013-07-15/record.json")
    assert drift["decision"] == "retrain", drift["reasons"]
    assert lake.is_committed("datasets/flights_delay/ds=2013-07-15")
    assert "new challenger v" in stdout
    assert lake.is_committed("golden/flights_delay_golden/v1")
    # July traffic finds the January golden set stale: an alarm naming the refresh range (the
    # refresh itself is off in this stack's settings: test_model_monitoring and `make demo` run it).
    stale = next(f for f in drift["findings"] if f["check"] == "golden")
    assert stale["status"] == "breach", stale
    assert stale["figures"]["refresh"] == {"start": "2013-06-29", "end": "2013-07-12"}
    assert not lake.is_committed("golden/flights_delay_golden/v2")
