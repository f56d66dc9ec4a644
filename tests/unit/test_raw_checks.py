"""Integrity and consistency checks of raw days: a real day passes, each corruption is named."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlpipeline.data import nycflights13_source as source
from mlpipeline.data import raw_checks
from mlpipeline.data.landing import day_rows
from mlpipeline.pipeline_config import get_pipeline_config

DAY = dt.date(2013, 3, 10)  # a DST change in New York: local hours skip 02:00


@pytest.fixture(scope="module")
def real():
    dims = {t: source.read_table(t) for t in ("planes", "airlines", "airports")}
    return day_rows("flights", DAY).copy(), day_rows("weather", DAY).copy(), dims


def _failed(flights, weather, dims) -> dict[str, str]:
    thresholds = get_pipeline_config().quality.raw_min_share
    failures, evaluated = raw_checks.check_window(
        {DAY: {"flights": flights, "weather": weather}}, dims, thresholds
    )
    assert evaluated == len(raw_checks.CHECKS)
    return {f["expectation"]: f["check_class"] for f in failures}


def test_a_real_day_passes_every_check(real):
    assert _failed(*real) == {}


def _every(frame: pd.DataFrame, n: int = 10) -> pd.Index:
    return frame.index[::n]


def _set(frame, column, values, rows=None):
    frame = frame.copy()
    rows = frame.index if rows is None else rows
    frame.loc[rows, column] = values if not callable(values) else values(frame.loc[rows, column])
    return frame


# (what a broken upstream did, which frame, the change, the check that must name it)
FLIGHTS, WEATHER, DIMS = "flights", "weather", "dims"
CORRUPTIONS = {
    # integrity
    "carrier codes lower-cased": (FLIGHTS, lambda f: _set(f, "carrier", lambda s: s.str.lower()), "carrier_in_airlines"),
    "unknown destinations": (FLIGHTS, lambda f: _set(f, "dest", "ZZZ", _every(f, 5)), "dest_in_airports"),
    "origin as an ICAO code": (FLIGHTS, lambda f: _set(f, "origin", "KEWR", _every(f, 50)), "origin_in_airports"),
    "tail numbers garbled": (FLIGHTS, lambda f: _set(f, "tailnum", lambda s: s.str[::-1], _every(f, 4)), "tailnum_in_planes"),
    "airlines snapshot lost a carrier": (DIMS, lambda d: d | {"airlines": d["airlines"][d["airlines"]["carrier"] != "UA"]}, "carrier_in_airlines"),
    "planes snapshot truncated": (DIMS, lambda d: d | {"planes": d["planes"].iloc[:1000]}, "tailnum_in_planes"),
    "weather station renamed": (WEATHER, lambda w: _set(w, "origin", "KJFK", w.index[w["origin"] == "JFK"]), "weather_origin_in_airports"),
    # consistency
    "partition holds the next day's flights": (FLIGHTS, lambda f: _set(f, "day", DAY.day + 1, _every(f, 3)), "flights_on_partition_day"),
    "weather of another day": (WEATHER, lambda w: _set(w, "day", DAY.day - 1), "weather_on_partition_day"),
    "time_hour written in local time": (FLIGHTS, lambda f: _set(f, "time_hour", lambda s: s - pd.Timedelta(hours=4)), "flights_time_hour_local"),
    "weather time_hour an hour late": (WEATHER, lambda w: _set(w, "time_hour", lambda s: s + pd.Timedelta(hours=1)), "weather_time_hour_local"),
    "scheduled time in UTC": (FLIGHTS, lambda f: _set(f, "sched_dep_time", lambda s: (s + 400) % 2400), "sched_dep_time_hour_minute"),
    "arrival delay in hours": (FLIGHTS, lambda f: _set(f, "arr_delay", lambda s: (s / 60).round()), "arr_delay_from_times"),
    "arrival delay sign flipped": (FLIGHTS, lambda f: _set(f, "arr_delay", lambda s: -s), "arr_delay_from_times"),
    "departure delay of the wrong flight": (FLIGHTS, lambda f: f.assign(dep_delay=f["dep_delay"].sample(frac=1, random_state=1).to_numpy()), "dep_delay_from_times"),
    "temperature in Celsius": (WEATHER, lambda w: _set(w, "temp", lambda s: (s - 32) * 5 / 9), "temp_above_dewp"),
    "humidity as a fraction": (WEATHER, lambda w: _set(w, "humid", lambda s: s / 100), "humid_from_temp_dewp"),
    "weather hours duplicated": (WEATHER, lambda w: pd.concat([w, w.iloc[::6]], ignore_index=True), "weather_hour_unique"),
    "weather of only half the hours": (WEATHER, lambda w: w[w["hour"] < 12], "flights_find_weather"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_each_corruption_is_named(real, case):
    flights, weather, dims = real
    which, change, expected = CORRUPTIONS[case]
    if which == FLIGHTS:
        flights = change(flights)
    elif which == WEATHER:
        weather = change(weather)
    else:
        dims = change(dims)
    failed = _failed(flights, weather, dims)
    assert expected in failed, failed
    assert failed[expected] == raw_checks.BY_NAME[expected].check_class


def test_a_failure_says_what_and_shows_examples(real):
    flights, weather, dims = real
    flights = _set(flights, "dest", "ZZZ", _every(flights, 5))
    thresholds = get_pipeline_config().quality.raw_min_share
    failures, _ = raw_checks.check_window({DAY: {"flights": flights, "weather": weather}}, dims, thresholds)
    (failure,) = failures
    assert failure["day"] == DAY.isoformat()
    assert failure["kwargs"] == {"what": "flights.dest found in airports", "min_share": 0.94}
    assert failure["observed"]["share"] < 0.8
    assert "ZZZ" in failure["observed"]["examples"]


def test_every_check_has_a_measured_threshold():
    assert set(get_pipeline_config().quality.raw_min_share) == set(raw_checks.BY_NAME)
