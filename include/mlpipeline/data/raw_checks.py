"""Integrity and consistency of the raw partitions of a window (before the dataset is trusted).

A corrupted upstream can commit a well-typed partition whose values are each in range but
wrong against other columns, other tables or the calendar. Every check measures, per raw
day, the share of rows that agree, and fails when it drops below the threshold of the
``quality.raw`` settings (measured on all of 2013, see ``include/config/pipeline.yaml``).

* integrity: foreign keys of the facts resolve in the dimension tables landed at the
  window's end (carrier → airlines, origin/dest → airports, tailnum → planes, weather
  origin → airports);
* consistency: fields that encode one fact agree (partition day vs year/month/day,
  ``time_hour`` vs the local calendar and hour in the airport's time zone, scheduled time
  vs hour/minute, delays vs scheduled and actual times, temperature vs dew point and
  humidity, unique weather hours, flights finding their weather hour).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Check:
    """One share-of-agreeing-rows check of a raw table."""

    name: str
    check_class: str  # "integrity" | "consistency"
    table: str
    column: str
    what: str


CHECKS: tuple[Check, ...] = (
    Check("carrier_in_airlines", "integrity", "flights", "carrier", "flights.carrier found in airlines"),
    Check("origin_in_airports", "integrity", "flights", "origin", "flights.origin found in airports"),
    Check("dest_in_airports", "integrity", "flights", "dest", "flights.dest found in airports"),
    Check("tailnum_in_planes", "integrity", "flights", "tailnum", "flights.tailnum (non-null) found in planes"),
    Check("weather_origin_in_airports", "integrity", "weather", "origin", "weather.origin found in airports"),
    Check("flights_on_partition_day", "consistency", "flights", "year,month,day", "year/month/day = the partition's day"),
    Check("weather_on_partition_day", "consistency", "weather", "year,month,day", "year/month/day = the partition's day"),
    Check("flights_time_hour_local", "consistency", "flights", "time_hour", "time_hour in the origin's time zone = year/month/day hour"),
    Check("weather_time_hour_local", "consistency", "weather", "time_hour", "time_hour in the origin's time zone = year/month/day hour"),
    Check("sched_dep_time_hour_minute", "consistency", "flights", "sched_dep_time", "sched_dep_time = hour*100 + minute"),
    Check("dep_delay_from_times", "consistency", "flights", "dep_delay", "dep_delay = dep_time - sched_dep_time (mod 24 h)"),
    Check("arr_delay_from_times", "consistency", "flights", "arr_delay", "arr_delay = arr_time - sched_arr_time (mod 24 h)"),
    Check("temp_above_dewp", "consistency", "weather", "temp,dewp", "temp >= dewp (within 0.5 F)"),
    Check("humid_from_temp_dewp", "consistency", "weather", "humid", "humid = Magnus(temp, dewp) within 5 points"),
    Check("weather_hour_unique", "consistency", "weather", "origin,time_hour", "one weather row per origin and hour"),
    Check("flights_find_weather", "consistency", "flights", "origin,time_hour", "flights whose origin hour has weather"),
)  # fmt: skip
BY_NAME = {c.name: c for c in CHECKS}


def _share(ok: pd.Series, considered: pd.Series | None = None) -> tuple[float | None, int]:
    """Share of ``ok`` among the considered rows (``None`` when none is considered)."""
    if considered is not None:
        ok = ok[considered]
    n = len(ok)
    return (None, 0) if n == 0 else (float(ok.fillna(False).astype(bool).mean()), n)


def _minutes(hhmm: pd.Series) -> pd.Series:
    values = hhmm.astype("Float64")
    return (values // 100) * 60 + values % 100


def _local(time_hour: pd.Series, origin: pd.Series, zones: dict[str, str]) -> pd.DataFrame:
    """year/month/day/hour of UTC ``time_hour`` in each row's airport time zone."""
    import pandas as pd

    ts = pd.to_datetime(time_hour, utc=True)
    out = pd.DataFrame(index=time_hour.index, columns=["year", "month", "day", "hour"], dtype="Int64")
    for zone in set(origin.map(zones).dropna()):
        mask = (origin.map(zones) == zone).to_numpy()
        local = ts[mask].dt.tz_convert(zone)
        for part in ("year", "month", "day", "hour"):
            out.loc[mask, part] = getattr(local.dt, part).astype("Int64").to_numpy()
    return out


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    return (a.astype("Float64") == b.astype("Float64")).fillna(False)


def _magnus_rh(temp_f: pd.Series, dewp_f: pd.Series) -> pd.Series:
    import numpy as np

    t = (temp_f.astype("float64") - 32) * 5 / 9
    d = (dewp_f.astype("float64") - 32) * 5 / 9
    return 100 * np.exp(17.625 * d / (243.04 + d)) / np.exp(17.625 * t / (243.04 + t))


def day_shares(
    day: dt.date, flights: pd.DataFrame, weather: pd.DataFrame, dims: dict[str, pd.DataFrame]
) -> dict[str, tuple[float | None, int]]:
    """Share of agreeing rows (and rows considered) of every check, for one raw day."""
    airports = dims["airports"]
    codes = set(airports["faa"].dropna())
    zones = dict(zip(airports["faa"], airports["tzone"], strict=False))
    f, w = flights, weather
    s: dict[str, tuple[float | None, int]] = {}
    # integrity -----------------------------------------------------------------------
    s["carrier_in_airlines"] = _share(f["carrier"].isin(set(dims["airlines"]["carrier"].dropna())))
    s["origin_in_airports"] = _share(f["origin"].isin(codes))
    s["dest_in_airports"] = _share(f["dest"].isin(codes))
    s["tailnum_in_planes"] = _share(
        f["tailnum"].isin(set(dims["planes"]["tailnum"].dropna())), f["tailnum"].notna()
    )
    s["weather_origin_in_airports"] = _share(w["origin"].isin(codes))
    # consistency: calendar -----------------------------------------------------------
    for name, frame in (("flights_on_partition_day", f), ("weather_on_partition_day", w)):
        on_day = [
            (frame[part].astype("Float64") == value).fillna(False)
            for part, value in (("year", day.year), ("month", day.month), ("day", day.day))
        ]
        s[name] = _share(on_day[0] & on_day[1] & on_day[2])
    for name, frame in (("flights_time_hour_local", f), ("weather_time_hour_local", w)):
        local = _local(frame["time_hour"], frame["origin"], zones)
        ok = _same(local["year"], frame["year"]) & _same(local["month"], frame["month"])
        s[name] = _share(ok & _same(local["day"], frame["day"]) & _same(local["hour"], frame["hour"]))
    s["sched_dep_time_hour_minute"] = _share(
        _same(f["sched_dep_time"], f["hour"].astype("Float64") * 100 + f["minute"].astype("Float64"))
    )
    # consistency: delays are differences of times (local clock, may cross midnight) -------
    for name, delay, actual, sched in (
        ("dep_delay_from_times", "dep_delay", "dep_time", "sched_dep_time"),
        ("arr_delay_from_times", "arr_delay", "arr_time", "sched_arr_time"),
    ):
        known = f[delay].notna() & f[actual].notna() & f[sched].notna()
        diff = (_minutes(f[actual]) - _minutes(f[sched])) % 1440
        s[name] = _share(_same(diff, f[delay].astype("Float64") % 1440), known)
    # consistency: weather physics and hours -------------------------------------------
    both = w["temp"].notna() & w["dewp"].notna()
    s["temp_above_dewp"] = _share(w["temp"].astype("Float64") >= w["dewp"].astype("Float64") - 0.5, both)
    rh = _magnus_rh(w["temp"], w["dewp"])
    s["humid_from_temp_dewp"] = _share(
        (w["humid"].astype("float64") - rh).abs() <= 5, both & w["humid"].notna()
    )
    s["weather_hour_unique"] = _share(~w.duplicated(["origin", "time_hour"], keep=False))
    import pandas as pd

    hours = pd.MultiIndex.from_arrays([w["origin"], pd.to_datetime(w["time_hour"], utc=True)])
    wanted = pd.MultiIndex.from_arrays([f["origin"], pd.to_datetime(f["time_hour"], utc=True)])
    s["flights_find_weather"] = _share(pd.Series(wanted.isin(hours), index=f.index))
    return s  # fmt: skip


def _examples(check: Check, day: dt.date, flights, weather, dims) -> list[str]:
    """A few offending values (for the report), cheap and best effort."""
    frame = flights if check.table == "flights" else weather
    if check.name == "carrier_in_airlines":
        bad = frame.loc[~frame["carrier"].isin(set(dims["airlines"]["carrier"])), "carrier"]
    elif check.name in ("origin_in_airports", "dest_in_airports", "weather_origin_in_airports"):
        bad = frame.loc[~frame[check.column].isin(set(dims["airports"]["faa"])), check.column]
    elif check.name == "tailnum_in_planes":
        bad = frame.loc[
            frame["tailnum"].notna() & ~frame["tailnum"].isin(set(dims["planes"]["tailnum"])), "tailnum"
        ]
    else:
        return []
    return [str(v) for v in bad.dropna().astype(str).value_counts().index[:5]]  # fmt: skip


def check_window(
    days: dict[dt.date, dict[str, pd.DataFrame]],
    dims: dict[str, pd.DataFrame],
    thresholds: dict[str, float],
) -> tuple[list[dict[str, Any]], int]:
    """Failed checks (one dict per check and day) and the number of checks evaluated."""
    failures: list[dict[str, Any]] = []
    evaluated = 0
    for day, tables in sorted(days.items()):
        shares = day_shares(day, tables["flights"], tables["weather"], dims)
        for check in CHECKS:
            share, n = shares[check.name]
            minimum = thresholds[check.name]
            evaluated += 1
            if share is None or share >= minimum:
                continue
            failures.append(
                {
                    "check_class": check.check_class,
                    "batch": f"raw/{check.table}",
                    "expectation": check.name,
                    "column": check.column,
                    "day": day.isoformat(),
                    "kwargs": {"what": check.what, "min_share": minimum},
                    "observed": {
                        "share": round(share, 4),
                        "rows": n,
                        "examples": _examples(check, day, tables["flights"], tables["weather"], dims),
                    },
                }
            )
    return failures, evaluated
