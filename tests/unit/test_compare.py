"""The promotion policy (evaluation.compare.promotion_decision): every rule, both outcomes."""

from __future__ import annotations

import pytest

from mlpipeline.evaluation.compare import Evaluation, promotion_decision
from mlpipeline.pipeline_config import DeploymentConfig

CFG = DeploymentConfig(
    primary_metric="roc_auc",
    min_uplift=0.0,
    bootstrap_resamples=1000,
    bootstrap_seed=7,
    slices=("carrier", "origin"),
    slice_min_rows=300,
    slice_tolerance=0.03,
    max_p99_latency_ms=5.0,
    max_model_bytes=50_000_000,
    engineering_repeats=1000,
)
GOOD_ENGINEERING = {"batch_rows": 2000, "single_row_p99_ms": 1.2, "model_bytes": 1_000_000}


def _evaluation(engineering=GOOD_ENGINEERING, ci=(0.002, 0.010), slices=(), champion=True) -> Evaluation:
    low, high = ci
    return Evaluation(
        primary_metric=CFG.primary_metric,
        challenger={"roc_auc": 0.75},
        champion={"roc_auc": 0.74} if champion else None,
        bootstrap={"metric": "roc_auc", "difference": (low + high) / 2, "ci_low": low, "ci_high": high}
        if champion
        else None,
        slices=list(slices),
        calibration={},
        engineering=dict(engineering),
        golden={"name": "g", "version": "v1", "rows": 2000},
    )


def _failed(decision: dict) -> list[str]:
    return [r["rule"] for r in decision["rules"] if not r["passed"]]


def test_first_model_is_promoted_when_it_loads_and_fits_the_budgets():
    decision = promotion_decision(_evaluation(champion=False), CFG, "2013-01-28", None, has_champion=False)
    assert decision["decision"] == "promote"
    assert [r["rule"] for r in decision["rules"]] == [
        "loads_and_scores",
        "latency_budget",
        "memory_budget",
        "bootstrap",
    ]
    assert decision["reasons"] == []


@pytest.mark.parametrize(
    ("engineering", "rule"),
    [
        ({**GOOD_ENGINEERING, "batch_rows": 0}, "loads_and_scores"),
        ({**GOOD_ENGINEERING, "single_row_p99_ms": 7.5}, "latency_budget"),  # an old report: wall time
        ({**GOOD_ENGINEERING, "single_row_cpu_p99_ms": 6.0}, "latency_budget"),
        ({**GOOD_ENGINEERING, "model_bytes": 60_000_000}, "memory_budget"),
    ],
)
def test_budgets_reject_even_the_first_model(engineering, rule):
    decision = promotion_decision(
        _evaluation(engineering, champion=False), CFG, "2013-01-28", None, has_champion=False
    )
    assert decision["decision"] == "reject"
    assert _failed(decision) == [rule]
    assert decision["reasons"][0].startswith(f"{rule}: ")


def test_the_latency_budget_judges_cpu_time_not_a_busy_machine_s_wall_time():
    busy = {**GOOD_ENGINEERING, "single_row_p99_ms": 18.1, "single_row_cpu_p99_ms": 1.1}
    decision = promotion_decision(
        _evaluation(busy, champion=False), CFG, "2013-01-28", None, has_champion=False
    )
    assert decision["decision"] == "promote", decision["reasons"]
    latency = next(r for r in decision["rules"] if r["rule"] == "latency_budget")
    assert latency["detail"] == "single-row p99 1.100 ms of CPU, 18.100 ms wall (budget 5.0 ms of CPU)"


def test_a_better_fresher_challenger_is_promoted():
    decision = promotion_decision(_evaluation(), CFG, "2013-01-29", "2013-01-28", has_champion=True)
    assert decision["decision"] == "promote"
    assert [r["rule"] for r in decision["rules"]][-3:] == ["uplift", "slices", "data_not_older"]


def test_uplift_needs_the_whole_interval_above_the_margin():
    decision = promotion_decision(
        _evaluation(ci=(-0.001, 0.010)), CFG, "2013-01-29", "2013-01-28", has_champion=True
    )
    assert decision["decision"] == "reject"
    assert _failed(decision) == ["uplift"]
    assert "uplift lower bound -0.0010 vs margin 0.0" in decision["reasons"][0]


def test_lower_is_better_metrics_need_the_interval_below_the_margin():
    cfg = CFG.model_copy(update={"primary_metric": "log_loss"})
    better = promotion_decision(_evaluation(ci=(-0.02, -0.001)), cfg, "2013-01-29", "2013-01-28", True)
    worse = promotion_decision(_evaluation(ci=(-0.02, 0.001)), cfg, "2013-01-29", "2013-01-28", True)
    assert better["decision"] == "promote"
    assert _failed(worse) == ["uplift"]


def test_a_slice_regressing_beyond_tolerance_rejects():
    slices = [
        {"slice": "carrier", "value": "UA", "rows": 500, "change": -0.05},
        {"slice": "origin", "value": "EWR", "rows": 800, "change": -0.01},
    ]
    decision = promotion_decision(_evaluation(slices=slices), CFG, "2013-01-29", "2013-01-28", True)
    assert _failed(decision) == ["slices"]
    assert "carrier=UA -0.0500 (500 rows) (tolerance 0.03)" in decision["reasons"][0]


@pytest.mark.parametrize(
    ("challenger_end", "champion_end"), [("2013-01-27", "2013-01-28"), (None, "2013-01-28")]
)
def test_a_model_on_older_data_is_never_promoted(challenger_end, champion_end):
    decision = promotion_decision(_evaluation(), CFG, challenger_end, champion_end, has_champion=True)
    assert decision["decision"] == "reject"
    assert _failed(decision) == ["data_not_older"]


# --- Two sets: the recent set decides, the golden set guards -------------------------------------
def _with_recent(evaluation: Evaluation, rows=2000, ci=(0.01, 0.03), slices=(), note=None) -> Evaluation:
    low, high = ci
    info = {"start": "2013-07-22", "end": "2013-07-28", "source": "challenger dataset's recent split"}
    if note:
        info["note"] = note
    evaluation.recent = {
        "info": info,
        "rows": rows,
        "bootstrap": {"metric": "roc_auc", "difference": (low + high) / 2, "ci_low": low, "ci_high": high},
        "slices": list(slices),
    }
    return evaluation


def _golden_loss(change: float) -> Evaluation:
    """Golden-set difference ``change`` (its interval entirely below zero when negative)."""
    return _evaluation(ci=(change - 0.01, change + 0.01) if change else (-0.005, 0.005))


def test_recent_win_promotes_within_the_golden_tolerance():
    decision = promotion_decision(_with_recent(_golden_loss(-0.015)), CFG, "2013-07-28", "2013-01-28", True)
    assert decision["decision"] == "promote", decision["reasons"]
    names = [r["rule"] for r in decision["rules"]]
    assert names[-5:] == ["recent_set", "uplift", "slices", "golden_guard", "data_not_older"]
    assert "recent set 2013-07-22..2013-07-28 (2000 rows) decides" in decision["rules"][3]["detail"]


def test_golden_regression_beyond_tolerance_rejects_a_recent_winner():
    decision = promotion_decision(_with_recent(_golden_loss(-0.03)), CFG, "2013-07-28", "2013-01-28", True)
    assert decision["decision"] == "reject"
    assert _failed(decision) == ["golden_guard"]
    assert "change -0.0300 (better is positive) vs tolerance -0.02" in decision["reasons"][0]


def test_a_recent_slice_regression_rejects():
    slices = [{"slice": "origin", "value": "JFK", "rows": 700, "change": -0.06}]
    decision = promotion_decision(
        _with_recent(_golden_loss(0.0), slices=slices), CFG, "2013-07-28", "2013-01-28", True
    )
    assert _failed(decision) == ["slices"]
    assert decision["reasons"][0].startswith("slices: recent set 2013-07-22..2013-07-28")


def test_no_recent_uplift_rejects_even_when_golden_is_better():
    decision = promotion_decision(
        _with_recent(_evaluation(), ci=(-0.01, 0.02)), CFG, "2013-07-28", "2013-01-28", True
    )
    assert _failed(decision) == ["uplift"]


@pytest.mark.parametrize("rows", [0, 499])
def test_too_few_recent_rows_leave_the_decision_to_the_golden_set(rows):
    # A golden loss (the recent set would win): with too few recent rows, golden decides -> reject.
    evaluation = _with_recent(_golden_loss(-0.015), rows=rows, note="labels late")
    decision = promotion_decision(evaluation, CFG, "2013-07-28", "2013-01-28", True)
    assert _failed(decision) == ["uplift"]
    recent_rule = next(r for r in decision["rules"] if r["rule"] == "recent_set")
    assert (
        f"{rows} recent labelled rows (< 500): the golden set alone decides (labels late)"
        in recent_rule["detail"]
    )
    assert "golden set v1 (2000 rows)" in decision["reasons"][0]


@pytest.mark.parametrize(("stale", "decision"), [(False, "reject"), (True, "promote")])
def test_a_stale_golden_set_guards_with_the_wider_tolerance(stale, decision):
    """A golden loss of 0.05: beyond golden_tolerance (0.02), within golden_stale_tolerance (0.10)."""
    evaluation = _with_recent(_golden_loss(-0.05))
    evaluation.golden["staleness"] = {"stale": stale, "drifted": ["temp", "dest"] if stale else []}
    result = promotion_decision(evaluation, CFG, "2013-07-28", "2013-01-28", True)
    assert result["decision"] == decision
    guard = next(r for r in result["rules"] if r["rule"] == "golden_guard")
    assert guard["detail"].endswith(
        "vs tolerance -0.1 (golden set stale: temp, dest drifted against the recent set)"
        if stale
        else "-0.02"
    )
