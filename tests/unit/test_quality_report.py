"""The gate's one report: failures grouped by class with the on-call action; the override path."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mlpipeline.data import steps
from mlpipeline.data.landing import land_range
from mlpipeline.data.quality import CLASSES, Failure, QualityReport, validate_raw
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import get_pipeline_config


def _report() -> QualityReport:
    failures = [
        Failure("rows", "expect_column_values_to_be_between", "distance", {"min_value": 17}, {"unexpected_count": 3}),
        Failure("raw/flights", "dest_in_airports", "dest", {"min_share": 0.94}, {"share": 0.8}, "integrity", "2013-01-06"),
        Failure("raw/flights", "arr_delay_from_times", "arr_delay", {"min_share": 0.999}, {"share": 0.1}, "consistency", "2013-01-05"),
        Failure("raw/profile", "q50_within_history", "flights.distance", {"allowed": [700, 1100]}, {"today": 1500, "history_range": [850, 900]}, "history", "2013-01-06"),
    ]  # fmt: skip
    return QualityReport("training_dataset", False, 40, failures)


def test_the_summary_groups_failures_by_class_with_the_action():
    markdown = _report().to_markdown("Quality gate: flights_delay 2013-01-06")
    for check_class, action in CLASSES.items():
        assert f"## Failed: {check_class} (1)" in markdown
        assert f"On-call: {action}" in markdown
    assert "| 2013-01-06 | raw/profile | q50_within_history | flights.distance |" in markdown
    assert "failed by class: schema 1, integrity 1, consistency 1, history 1" in markdown
    payload = json.loads(_report().to_json())
    assert set(payload["failures_by_class"]) == set(CLASSES)
    assert payload["failed_by_class"] == {"schema": 1, "integrity": 1, "consistency": 1, "history": 1}
    assert all(f["action"] for f in payload["failures"])
    assert payload["failures"][1]["description"].startswith(
        "[integrity raw/flights 2013-01-06] dest_in_airports"
    )
    assert payload["failures"][0]["description"].startswith("[rows] expect_column_values_to_be_between")


def test_accepted_days_become_warnings_and_are_recorded():
    report = _report()
    report.accept(["2013-01-05", "2013-01-06"], "TICKET-7: new route", {"run": {"run_id": "r1"}})
    assert not report.success  # the schema failure has no day: it cannot be accepted
    assert [f.check_class for f in report.failures] == ["schema"]
    report.failures = []
    report.accept(["2013-01-05", "2013-01-06"], "TICKET-7: new route")
    assert report.success
    summary = report.summary()
    assert summary["override"] == {
        "accept_days": ["2013-01-05", "2013-01-06"],
        "reason": "TICKET-7: new route",
        "accepted_failures": 3,
    }
    assert "**override**: days 2013-01-05, 2013-01-06 accepted on purpose" in report.to_markdown("t")
    assert "## Accepted (override): history (1)" in report.to_markdown("t")


@pytest.mark.parametrize(
    ("days", "reason", "expected"),
    [
        (None, None, ([], None)),
        ([], "", ([], None)),
        (["2013-01-06", "2013-01-05"], "known", (["2013-01-05", "2013-01-06"], "known")),
        ("2013-01-06", "known", (["2013-01-06"], "known")),
    ],
)
def test_override_params(days, reason, expected):
    assert steps.accepted_days(days, reason) == expected


def test_an_override_needs_a_reason_and_real_days():
    with pytest.raises(ValueError, match="needs override_reason"):
        steps.accepted_days(["2013-01-06"], "  ")
    with pytest.raises(ValueError, match="expected a list of days"):
        steps.accepted_days(["yesterday"], "because")


def test_validate_raw_on_landed_days_and_a_corrupted_one(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}")
    land_range(lake, dt.date(2013, 1, 1), dt.date(2013, 1, 10))
    cfg = get_pipeline_config().quality
    assert validate_raw(lake, cfg, dt.date(2013, 1, 8), dt.date(2013, 1, 10))[0] == []
    directory = "raw/flights/dt=2013-01-10"
    frame = lake.read_frame(directory)
    lake.publish_frames(directory, {"part-0": frame[frame["carrier"] != "UA"].assign(dest="ZZZ")})
    failures, _ = validate_raw(lake, cfg, dt.date(2013, 1, 8), dt.date(2013, 1, 10))
    found = {(f.check_class, f.expectation, f.day) for f in failures}
    assert ("integrity", "dest_in_airports", "2013-01-10") in found
    assert ("history", "share[UA]_within_history", "2013-01-10") in found


def test_the_override_is_copied_to_the_model_version_tags(tmp_path):
    """Training tags its run (and so the registered version) with the manifest's override."""
    from mlpipeline.training import steps as training_steps
    from mlpipeline.training import tracking

    lake = Lake.from_uri(f"file://{tmp_path}")
    cfg = get_pipeline_config()
    manifest = {
        "name": "flights_delay",
        "version": "2013-01-06",
        "content_hash": "sha256:abc",
        "window": {"start": "2013-01-04", "end": "2013-01-06"},
        "quality": {
            "override": {"accept_days": ["2013-01-06"], "reason": "TICKET-7", "accepted_failures": 2}
        },
    }
    tags = training_steps._run_tags(manifest, lake, cfg, {})
    assert json.loads(tags[tracking.TAG_QUALITY_OVERRIDE]) == {
        "accept_days": ["2013-01-06"],
        "reason": "TICKET-7",
        "accepted_failures": 2,
    }
    del manifest["quality"]
    assert tracking.TAG_QUALITY_OVERRIDE not in training_steps._run_tags(manifest, lake, cfg, {})
