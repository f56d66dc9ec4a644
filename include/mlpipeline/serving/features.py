"""The Spark job's feature derivation, in pandas: the features of one day's flights without Spark.

**This module duplicates the feature derivation of the Spark job**
(:mod:`mlpipeline.spark_jobs.build_dataset`, see its ``COLUMN_DOCS``) in plain pandas, for the
serving side: a client builds the features of one day without a Spark cluster. The two must
give identical values; ``tests/unit/test_replay.py`` runs the real job on a real day and
compares every feature of every flight. Change one, change both.

Differences from the job, on purpose: every scheduled flight is kept, cancelled and diverted
ones too (production traffic has no label yet), and no subsample is applied. As in the job,
duplicates on the flight key keep one row (chosen by the job's total order), weather comes
from the day's partition, planes from the day's snapshot (airlines only give the job's
``airline_name``, an analysis column, so they are not read).

Request rows (:func:`request_rows_for_day`) carry only the features the served model's spec
lists (plus ``flight_key``): the server rejects unknown fields. Values are JSON-safe: ``int``
for whole-number features, ``float`` for the others, ``str`` for categories, ``None`` for a
missing number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlpipeline import locations
from mlpipeline.features import INTEGER_FEATURES
from mlpipeline.lake import Lake
from mlpipeline.spark_jobs import build_dataset as job

if TYPE_CHECKING:
    import pandas as pd

#: Raw partitions the request rows are built from (airlines only feed an analysis column).
REQUEST_TABLES = ("flights", "weather", "planes")


class FeatureDerivationError(RuntimeError):
    """The day's features cannot be derived; the message says why."""


class MissingRawError(FeatureDerivationError):
    """Raw partitions the day needs are not committed."""


def require_raw(lake: Lake, day: dt.date, tables: Sequence[str] = REQUEST_TABLES) -> None:
    """:class:`MissingRawError` naming every partition of ``day`` that is not committed."""
    missing = lake.missing(locations.raw_partition(t, day) for t in tables)
    if missing:
        raise MissingRawError(
            f"{len(missing)} raw partition(s) not committed: {', '.join(missing)}; "
            f"land {day.isoformat()} first (DAG raw_landing, or `airflow backfill create --dag-id "
            f"raw_landing --from-date {day.isoformat()} --to-date {day.isoformat()}`)"
        )


def _read_raw(lake: Lake, table: str, day: dt.date, extra: Sequence[str] = ()) -> pd.DataFrame:
    """The job's read: only its columns (then ``extra``), integers as Int64, numbers as Float64."""
    frame = lake.read_frame(locations.raw_partition(table, day))
    columns = job.RAW_COLUMNS[table]
    missing = [c for c in [*columns, *extra] if c not in frame.columns]
    if missing:
        raise FeatureDerivationError(
            f"{locations.raw_partition(table, day)} lacks column(s) {', '.join(missing)}"
        )
    out = frame[[*columns, *extra]].copy()
    for column, kind in columns.items():
        if kind == "int":
            out[column] = out[column].astype("Int64")
        elif kind == "double":
            out[column] = out[column].astype("Float64")
        elif kind == "string":
            out[column] = out[column].astype("string")
    return out


def _dedup(frame: pd.DataFrame, key: Sequence[str], first: Sequence[str] = ()) -> pd.DataFrame:
    """The job's :func:`dedup`: one row per complete ``key``, the first in its total order.

    Order: the ``first`` columns, then every other column ascending with nulls first. Rows
    with a null key part are all kept.
    """
    others = [c for c in frame.columns if c not in key and c not in first]
    ordered = frame.sort_values([*first, *others], na_position="first", kind="mergesort")
    complete = ordered[list(key)].notna().all(axis=1)
    duplicate = complete & ordered.duplicated(list(key), keep="first")
    return ordered.loc[~duplicate].sort_index()


def flight_keys(flights: pd.DataFrame) -> pd.Series:
    """The job's ``flight_key`` (``YYYY-MM-DD_<carrier>_<flight>_<origin>_<HHMM>``; null if a part is)."""
    import pandas as pd

    parts = flights[list(job.FLIGHT_KEY_COLUMNS)]
    complete = parts.notna().all(axis=1)
    keys = [
        f"{int(y):04d}-{int(m):02d}-{int(d):02d}_{c}_{int(f)}_{o}_{int(s):04d}" if ok else None
        for ok, y, m, d, c, f, o, s in zip(complete, *(parts[c] for c in parts.columns), strict=True)
    ]
    return pd.Series(keys, index=flights.index, dtype="string")


def _flight_dates(flights: pd.DataFrame) -> pd.Series:
    """Local scheduled departure date; null when year/month/day is not a valid date."""
    import pandas as pd

    dates = []
    for y, m, d in zip(flights["year"], flights["month"], flights["day"], strict=True):
        try:
            dates.append(dt.date(int(y), int(m), int(d)))
        except (TypeError, ValueError):  # null part or no such day
            dates.append(None)
    return pd.Series(dates, index=flights.index, dtype="object")


def clean_flights(lake: Lake, day: dt.date, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Day D's flights, one per flight key (the job's choice), with key and date.

    ``extra`` columns come last in the order that picks among duplicates, so they only
    break ties the job leaves open: the row kept is always one the job could keep.
    """
    flights = _read_raw(lake, "flights", day, extra)
    flights["_no_label"] = flights["arr_delay"].isna()
    flights = _dedup(flights, job.FLIGHT_KEY_COLUMNS, first=("_no_label",)).drop(columns="_no_label")
    flights["flight_key"] = flight_keys(flights)
    flights["flight_date"] = _flight_dates(flights)
    return flights.reset_index(drop=True)


def features_for_day(lake: Lake, day: dt.date) -> pd.DataFrame:
    """Every scheduled flight of ``day`` (cancelled ones too) with ``flight_key`` and all features.

    Columns: ``flight_key`` then :data:`build_dataset.FEATURE_COLUMNS`, with the job's types
    (Int64 for whole numbers, Float64, string) and null handling.
    """
    import pandas as pd

    require_raw(lake, day)
    flights = clean_flights(lake, day)
    # traffic arrives in scheduled-departure order
    flights = flights.sort_values(["sched_dep_time", "flight_key"], na_position="last", kind="mergesort")

    weather = _dedup(_read_raw(lake, "weather", day), ("origin", "time_hour"))
    weather = weather.dropna(subset=["origin", "time_hour"])  # a null key never joins in Spark
    weather = weather[["origin", "time_hour", *job.WEATHER_COLUMNS]].rename(
        columns={c: f"_w_{c}" for c in job.WEATHER_COLUMNS}
    )
    planes = _dedup(_read_raw(lake, "planes", day), ("tailnum",)).dropna(subset=["tailnum"])
    planes = planes.rename(columns={c: f"_p_{c}" for c in planes.columns if c != "tailnum"})

    # Null keys were dropped from the dimensions: pandas would join null to null, Spark never does.
    joined = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")
    joined = joined.merge(planes, on="tailnum", how="left", validate="many_to_one")
    if len(joined) != len(flights):
        raise FeatureDerivationError(f"joining the dimensions changed the flights of {day.isoformat()}")

    def unknown(column: str) -> pd.Series:
        return joined[column].astype("string").fillna(job.UNKNOWN)

    iso_weekday = pd.array(
        [d.isoweekday() if d is not None else None for d in joined["flight_date"]], dtype="Int64"
    )
    sched = joined["sched_dep_time"]
    out = pd.DataFrame(
        {
            "flight_key": joined["flight_key"],
            "month": joined["month"].astype("Int64"),
            "day_of_week": iso_weekday,
            "sched_dep_hour": sched // 100,  # floor division and a non-negative modulo, as Spark's
            "sched_dep_minute": sched % 100,  # floor() and pmod() for a positive divisor
            "carrier": unknown("carrier"),
            "origin": unknown("origin"),
            "dest": unknown("dest"),
            "distance": joined["distance"].astype("Float64"),
            **{c: joined[f"_w_{c}"].astype("Float64") for c in job.WEATHER_COLUMNS},
            "plane_age": (joined["year"] - joined["_p_year"]).astype("Int64"),
            "plane_seats": joined["_p_seats"].astype("Int64"),
            "plane_engines": joined["_p_engines"].astype("Int64"),
            "plane_type": unknown("_p_type"),
            "plane_manufacturer": unknown("_p_manufacturer"),
        }
    )
    return out[["flight_key", *job.FEATURE_COLUMNS]]


def request_rows_for_day(lake: Lake, day: dt.date, spec_features: Sequence[str]) -> list[dict[str, Any]]:
    """Request rows (JSON-safe) for every flight scheduled on ``day``, with ``spec_features`` only.

    ``spec_features`` is the served model's feature list (its ``feature_spec.json``; see
    :func:`served_features`). :class:`FeatureDerivationError` if it names a feature the job does not
    derive; :class:`MissingRawError` if the day's raw partitions are not committed.
    """
    unknown = [f for f in spec_features if f not in job.FEATURE_COLUMNS]
    if unknown:
        raise FeatureDerivationError(
            f"the model wants feature(s) {', '.join(unknown)}, which the dataset job does not derive "
            f"(known: {', '.join(job.FEATURE_COLUMNS)})"
        )
    frame = features_for_day(lake, day)
    columns = {name: _json_values(frame[name], name) for name in spec_features}
    keys = _json_values(frame["flight_key"], "flight_key")
    rows = []
    for i, key in enumerate(keys):
        row = {name: values[i] for name, values in columns.items()}
        if key is not None:
            row["flight_key"] = key
        rows.append(row)
    return rows


def _json_values(series: pd.Series, name: str) -> list[Any]:
    import pandas as pd

    if name in job.CATEGORICAL_FEATURES or name == "flight_key":
        return [None if pd.isna(v) else str(v) for v in series]
    if name in INTEGER_FEATURES:
        return [None if pd.isna(v) else int(v) for v in series]
    return [None if pd.isna(v) else float(v) for v in series]
