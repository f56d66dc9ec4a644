"""Golden-set staleness (monitoring/golden.py): the refresh range, the finding on real flights,
and what the decision does with it (an alarm; production never moves because of it)."""

from __future__ import annotations

import datetime as dt

import pytest
from serving_fixtures import CATEGORICAL, FEATURES, real_rows

from mlpipeline.data import datasets
from mlpipeline.lake import Lake
from mlpipeline.monitoring.checks import BREACH, OK, SKIPPED, Finding
from mlpipeline.monitoring.decide import (
    ALARM_ONLY,
    HEALTHY,
    ROLLBACK,
    WARN,
    ChampionInfo,
    monitoring_decision,
)
from mlpipeline.monitoring.golden import refresh_conf, refresh_range, staleness_finding
from mlpipeline.pipeline_config import get_pipeline_config

D = dt.date
START = D(2013, 1, 1)
CFG = get_pipeline_config()  # 28-day windows, 14 refresh days


def test_refresh_range_is_the_newest_days_before_the_window_of_the_day():
    january = (D(2013, 1, 4), D(2013, 1, 31))
    assert refresh_range(D(2013, 7, 15), CFG, [january], START) == (D(2013, 6, 4), D(2013, 6, 17))


def test_refresh_range_steps_back_over_windows_in_use():
    spring = (D(2013, 5, 20), D(2013, 6, 16))  # a challenger trained on late spring
    assert refresh_range(D(2013, 7, 15), CFG, [spring], START) == (D(2013, 5, 6), D(2013, 5, 19))


@pytest.mark.parametrize("day", [D(2013, 1, 20), D(2013, 2, 10)])
def test_no_refresh_range_before_enough_data(day):
    assert refresh_range(day, CFG, [(D(2013, 1, 1), D(2013, 1, 28))], START) is None


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """A lake whose golden set v1 is 3,000 real January flights."""
    lake = Lake.from_uri(f"file://{tmp_path_factory.mktemp('golden-lake')}")
    golden = real_rows(n=3000, seed=11)
    manifest = datasets.build_manifest(
        name=CFG.golden.name, kind="golden", version="v1", window=(D(2013, 1, 15), D(2013, 1, 30)),
        frames={"golden": golden}, job_stats={}, quality={}, params={}, golden=None,
    )  # fmt: skip
    datasets.publish_golden_frame(lake, golden, manifest)
    return lake


def test_january_traffic_finds_the_january_golden_set_fresh(lake):
    traffic = real_rows(n=4000, seed=12).assign(score=0.2)
    finding = staleness_finding(lake, CFG, traffic, FEATURES, CATEGORICAL, "2013-01-31", [], START)
    assert finding.status == OK, finding.summary
    assert finding.figures["golden_version"] == "v1"


def test_july_traffic_finds_it_stale_and_names_the_refresh(lake):
    traffic = real_rows(n=4000, seed=13, month=7).assign(score=0.2)
    in_use = [(D(2013, 1, 4), D(2013, 1, 31))]
    finding = staleness_finding(lake, CFG, traffic, FEATURES, CATEGORICAL, "2013-07-15", in_use, START)
    assert finding.status == BREACH
    assert "temp" in finding.breaches
    assert finding.summary.startswith("golden set v1 (2013-01-15..2013-01-30) is stale: ")
    assert finding.figures["refresh"] == {"start": "2013-06-04", "end": "2013-06-17"}
    assert "build the next golden version from 2013-06-04..2013-06-17" in finding.figures["suggested_action"]
    conf = refresh_conf(finding.as_dict(), CFG, "2013-07-15")
    assert (conf["start"], conf["end"], conf["version"]) == ("2013-06-04", "2013-06-17", None)
    off = CFG.model_copy(update={"golden": CFG.golden.model_copy(update={"refresh_on_stale": False})})
    assert refresh_conf(finding.as_dict(), off, "2013-07-15") is None
    assert (
        "trigger it from the UI"
        in staleness_finding(lake, off, traffic, FEATURES, CATEGORICAL, "2013-07-15", in_use, START).figures[
            "suggested_action"
        ]
    )


def test_a_stale_golden_set_with_nothing_fresher_allowed_is_a_note(lake):
    """The refresh range overlaps the current golden set (the training windows have not moved on):
    no second build of the same days, no alarm; the record says why."""
    traffic = real_rows(n=4000, seed=13, month=7).assign(score=0.2)
    # On 02-27 the newest days before the day's window are 01-17..30: v1's own (01-15..30).
    finding = staleness_finding(lake, CFG, traffic, FEATURES, CATEGORICAL, "2013-02-27", [], START)
    assert finding.status == WARN
    assert "kept: no fresher days outside the training windows in use" in finding.summary
    assert "refresh" not in finding.figures
    assert refresh_conf(finding.as_dict(), CFG, "2013-02-27") is None
    now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    champion = ChampionInfo("3", "promote", "2026-01-09T00:00:00+00:00", "2")
    ok = [_f(c, OK) for c in ("traffic", "drift", "quality", "engineering", "consistency")]
    decided = monitoring_decision([*ok, finding], champion, CFG.monitoring, "m", "d", now)
    assert (decided.action, decided.alarms) == (HEALTHY, [])


def test_a_golden_set_from_later_in_the_year_is_refreshed_too(tmp_path):
    """The demo's golden set is December's: a July refresh range (June) lies before it, not in it."""
    lake = Lake.from_uri(f"file://{tmp_path}")
    golden = real_rows(n=3000, seed=11)
    manifest = datasets.build_manifest(
        name=CFG.golden.name, kind="golden", version="v1", window=(D(2013, 12, 1), D(2013, 12, 30)),
        frames={"golden": golden}, job_stats={}, quality={}, params={}, golden=None,
    )  # fmt: skip
    datasets.publish_golden_frame(lake, golden, manifest)
    traffic = real_rows(n=4000, seed=13, month=7).assign(score=0.2)
    finding = staleness_finding(lake, CFG, traffic, FEATURES, CATEGORICAL, "2013-07-15", [], START)
    assert finding.status == BREACH
    assert finding.figures["refresh"] == {"start": "2013-06-04", "end": "2013-06-17"}


def test_no_golden_set_is_skipped(tmp_path):
    empty = Lake.from_uri(f"file://{tmp_path}")
    finding = staleness_finding(empty, CFG, real_rows(n=200), FEATURES, CATEGORICAL, "2013-01-31", [], START)
    assert finding.status == SKIPPED


def _f(check: str, status: str, **figures) -> Finding:
    return Finding(check, status, f"{check} {status}", figures, version="3")


def test_a_stale_golden_set_alarms_and_never_moves_production():
    now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    fresh = ChampionInfo("3", "promote", "2026-01-09T00:00:00+00:00", "2")
    ok = [_f(c, OK) for c in ("traffic", "drift", "quality", "engineering", "consistency")]
    stale = _f("golden", BREACH, suggested_action="build the next golden version from A..B")
    decided = monitoring_decision([*ok, stale], fresh, CFG.monitoring, "m", "d", now)
    assert decided.action == ALARM_ONLY
    assert decided.rollback_target is None
    assert [(a["check"], a["severity"], a["suggested_action"]) for a in decided.alarms] == [
        ("golden", "warning", "build the next golden version from A..B")
    ]
    # A champion breach still rolls back; the stale golden set rides along as a warning.
    breach = [*ok[:2], _f("quality", BREACH), *ok[3:], stale]
    rolled = monitoring_decision(breach, fresh, CFG.monitoring, "m", "d", now)
    assert (rolled.action, rolled.rollback_target) == (ROLLBACK, "2")
    assert [a["check"] for a in rolled.alarms] == ["quality", "golden"]
