"""Each raw day against its history: no real 2013 day is blocked, a day whose meaning changed is."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from mlpipeline import locations
from mlpipeline.data import nycflights13_source as source
from mlpipeline.data import profiles, raw_checks
from mlpipeline.data.landing import land_range
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import get_pipeline_config
from mlpipeline.settings import NYCFLIGHTS13_FIRST_DAY, NYCFLIGHTS13_LAST_DAY

HISTORY = get_pipeline_config().quality.history


def _key(frame: pd.DataFrame) -> pd.Series:
    return frame["year"].astype(int) * 10000 + frame["month"].astype(int) * 100 + frame["day"].astype(int)


@pytest.fixture(scope="module")
def year() -> dict[dt.date, dict[str, pd.DataFrame]]:
    """Every landable day of 2013, as the landing would split it."""
    flights, weather = source.read_table("flights"), source.read_table("weather")
    by_f, by_w = dict(tuple(flights.groupby(_key(flights)))), dict(tuple(weather.groupby(_key(weather))))
    days, day = {}, NYCFLIGHTS13_FIRST_DAY
    while day <= NYCFLIGHTS13_LAST_DAY:
        k = day.year * 10000 + day.month * 100 + day.day
        days[day] = {"flights": by_f[k].reset_index(drop=True), "weather": by_w[k].reset_index(drop=True)}
        day += dt.timedelta(days=1)
    return days


@pytest.fixture(scope="module")
def year_profiles(year) -> dict[dt.date, dict[str, float]]:
    return {day: profiles.profile_day(t["flights"], t["weather"]) for day, t in year.items()}


@pytest.mark.parametrize("history_days", range(HISTORY.min_days, HISTORY.days + 1))
def test_no_real_2013_day_is_blocked_by_its_history(year_profiles, history_days):
    """Blizzard (02-08/09), holidays, DST days, storms; full and short histories alike."""
    cfg = HISTORY.model_copy(update={"days": history_days})
    failures, judged = profiles.check_days(year_profiles, sorted(year_profiles), cfg)
    assert failures == []
    assert judged == len(year_profiles)


def test_the_whole_of_2013_passes_integrity_and_consistency(year):
    dims = {t: source.read_table(t) for t in ("planes", "airlines", "airports")}
    failures, evaluated = raw_checks.check_window(year, dims, get_pipeline_config().quality.raw_min_share)
    assert failures == []
    assert evaluated == len(year) * len(raw_checks.CHECKS)


JUDGED = dt.date(2013, 3, 20)


def _drop(column, values):
    return lambda f: f[~f[column].isin(values)]


# (the change to the day's flights or weather, a column and statistic that must be named)
CORRUPTIONS = {
    "distance in kilometres": ("flights", lambda f: f.assign(distance=f["distance"] * 1.609), "flights.distance", "q90"),
    "a carrier lost upstream": ("flights", _drop("carrier", ["UA"]), "flights.carrier", "share[UA]"),
    "an airport lost upstream": ("flights", _drop("origin", ["EWR"]), "flights.origin", "share[EWR]"),
    "half the flights missing": ("flights", lambda f: f.iloc[::2], "flights", "rows"),
    "tail numbers all null": ("flights", lambda f: f.assign(tailnum=pd.NA), "flights.tailnum", "null_share"),
    "labels all null": ("flights", lambda f: f.assign(arr_delay=pd.NA), "flights.arr_delay", "null_share"),
    "air time in hours": ("flights", lambda f: f.assign(air_time=f["air_time"] / 60), "flights.air_time", "q50"),
    "delays in seconds": ("flights", lambda f: f.assign(arr_delay=f["arr_delay"] * 60), "flights.arr_delay", "q90"),
    "pressure in inHg": ("weather", lambda w: w.assign(pressure=w["pressure"] / 33.86), "weather.pressure", "q50"),
    "visibility in metres": ("weather", lambda w: w.assign(visib=w["visib"] * 1609), "weather.visib", "q50"),
    "one flight number for all": ("flights", lambda f: f.assign(flight=1), "flights.flight", "distinct"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_day_whose_meaning_changed_is_blocked(year, year_profiles, case):
    table, change, column, statistic = CORRUPTIONS[case]
    tables = dict(year[JUDGED])
    tables[table] = change(tables[table].copy())
    corrupted = dict(year_profiles) | {JUDGED: profiles.profile_day(tables["flights"], tables["weather"])}
    failures, _ = profiles.check_days(corrupted, [JUDGED], HISTORY)
    named = {(f["column"], f["expectation"].removesuffix("_within_history")) for f in failures}
    assert (column, statistic) in named, named
    failure = next(f for f in failures if f["column"] == column)
    assert failure["check_class"] == "history"
    assert failure["day"] == JUDGED.isoformat()
    low, high = failure["observed"]["history_range"]
    assert low <= high
    assert failure["kwargs"]["allowed"][0] <= failure["kwargs"]["allowed"][1]


def test_too_little_history_is_not_judged(year_profiles):
    few = {d: p for d, p in year_profiles.items() if d >= JUDGED - dt.timedelta(days=HISTORY.min_days - 1)}
    assert profiles.check_days(few, [JUDGED], HISTORY) == ([], 1)


def test_profiles_are_stored_once_per_landed_content(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}")
    day = dt.date(2013, 1, 2)
    land_range(lake, day, day)
    first = profiles.load_or_compute(lake, day)
    digest = profiles.partition_hash(lake, day)
    stored = locations.raw_profile(day, digest)
    assert json.loads(lake.read_bytes(stored))["stats"] == first
    # A stored profile is read, not recomputed.
    body = lake.read_json(stored)
    lake.write_json(stored, body | {"stats": {"rows|flights|rows": -1.0}})
    assert profiles.load_or_compute(lake, day) == {"rows|flights|rows": -1.0}
    # A re-landed day is another content: a new profile beside the old one.
    land_range(lake, day, day)
    assert profiles.partition_hash(lake, day) != digest
    assert profiles.load_or_compute(lake, day) == first
    assert len(lake.fs.ls(lake.path(f"raw/_profiles/dt={day}"))) == 2
    # A day that never landed has none.
    assert profiles.load_or_compute(lake, dt.date(2013, 1, 3)) is None
