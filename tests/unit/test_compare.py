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
        ({**GOOD_ENGINEERING, "single_row_p99_ms": 7.5}, "latency_budget"),
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
