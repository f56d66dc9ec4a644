"""The dataset job's split plan (build_dataset.split_plan): which days train, validate and judge."""

from __future__ import annotations

import datetime as dt

import pytest

from mlpipeline.spark_jobs.build_dataset import parse_args, split_plan

END = dt.date(2013, 1, 28)


def test_time_split_holds_out_the_newest_days_then_validates_on_the_days_before():
    plan = split_plan(END, 28, "time", validation_days=5, holdout_days=7)
    assert plan["kind"] == "time"
    assert plan["train"] == {"start": "2013-01-01", "end": "2013-01-16", "days": 16}
    assert plan["validation"] == {"start": "2013-01-17", "end": "2013-01-21", "days": 5}
    assert plan["recent"] == {"start": "2013-01-22", "end": "2013-01-28", "days": 7}


def test_key_hash_split_shares_the_days_and_keeps_the_holdout():
    plan = split_plan(END, 28, "key_hash", validation_days=5, holdout_days=7, validation_fraction=0.25)
    assert plan["kind"] == "key_hash"
    assert plan["validation_fraction"] == 0.25
    assert plan["train"] == plan["validation"] == {"start": "2013-01-01", "end": "2013-01-21", "days": 21}
    assert plan["recent"]["start"] == "2013-01-22"


@pytest.mark.parametrize(
    ("days", "holdout", "validation", "expected"),
    [
        (3, 7, 5, (2, 1, 0)),  # a short window: no holdout (at most a third), one validation day
        (7, 7, 5, (3, 2, 2)),  # holdout capped at (7-1)//3 = 2, validation at half of the 5 left
        (10, 0, 5, (5, 5, 0)),
        (2, 0, 5, (1, 1, 0)),
    ],
)
def test_short_windows_are_capped_so_every_split_keeps_days(days, holdout, validation, expected):
    plan = split_plan(END, days, "time", validation_days=validation, holdout_days=holdout)
    got = (plan["train"]["days"], plan["validation"]["days"], plan["recent"]["days"] if plan["recent"] else 0)
    assert got == expected
    assert plan["train"]["start"] == (END - dt.timedelta(days=days - 1)).isoformat()


def test_a_one_day_window_falls_back_to_the_key_hash_and_says_so():
    plan = split_plan(END, 1, "time", validation_days=5, holdout_days=3)
    assert plan["requested"] == "time"
    assert plan["kind"] == "key_hash"
    assert plan["recent"] is None


def test_the_cli_computes_the_plan_and_refuses_a_negative_holdout(capsys):
    args = parse_args(
        ["--raw-root", "r", "--end-date", "2013-01-28", "--window-days", "28", "--output", "o",
         "--validation-split", "time", "--holdout-days", "7"]
    )  # fmt: skip
    assert args.split_plan["recent"]["days"] == 7
    assert args.split_plan["validation"]["days"] == 5
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--raw-root", "r", "--end-date", "2013-01-28", "--window-days", "3", "--output", "o",
                    "--holdout-days", "-1"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--holdout-days: expected an integer >= 0, got -1" in capsys.readouterr().err
