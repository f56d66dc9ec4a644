"""Traffic replay and delayed labels: the demo's production traffic and its ground truth.

The demo has no real clients, so the flights *scheduled* on day D are sent to the model
server as prediction requests, at a bounded rate, with ``request_date`` = D (the prediction
log files them under ``serving/predictions/dt=D/``). The true outcomes arrive later, as they
would in production: :func:`land_labels` writes them to ``serving/labels/dt=D/``, and the
``traffic_replay`` DAG lands day D's labels ``LABEL_DELAY_DAYS`` days after its traffic.

Request rows (:func:`request_rows_for_day`)
-------------------------------------------
**This module duplicates the feature derivation of the Spark job**
(:mod:`mlpipeline.spark_jobs.build_dataset`, see its ``COLUMN_DOCS``) in plain pandas, for the
serving side: a client builds the features of one day without a Spark cluster. The two must
give identical values; ``tests/unit/test_replay.py`` runs the real job on a real day and
compares every feature of every flight. Change one, change both.

Differences from the job, on purpose: every scheduled flight is sent, cancelled and diverted
ones too (production traffic has no label yet), and no subsample is applied. As in the job,
duplicates on the flight key keep one row (chosen by the job's total order), weather comes
from the day's partition, planes from the day's snapshot (airlines only give the job's
``airline_name``, an analysis column, so they are not read).

Only the features the served model's spec lists are sent (plus ``flight_key``): the server
rejects unknown fields. Values are JSON-safe: ``int`` for whole-number features, ``float``
for the others, ``str`` for categories, ``None`` for a missing number.

Labels (:func:`land_labels`)
----------------------------
``serving/labels/dt=D/labels.parquet``, committed atomically: ``flight_key``, ``flight_date``,
``arr_delay`` (minutes, null when the flight never arrived), ``is_delayed`` (``arr_delay`` >
15 minutes; null when there is no ``arr_delay``), ``cancelled`` (never departed: no
``dep_time``) and ``diverted`` (departed, no arrival delay).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipeline.data.landing import partition_dir
from mlpipeline.features import INTEGER_FEATURES
from mlpipeline.lake import Lake, LakeError
from mlpipeline.spark_jobs import build_dataset as job

if TYPE_CHECKING:
    import httpx
    import pandas as pd

log = logging.getLogger(__name__)

#: Rows per second the DAG sends by default (a day of ~900 flights takes ~20 s).
REPLAY_RATE_PER_S = 50.0
#: Rows per ``POST /predict`` the DAG sends by default (1 = one request per flight).
REPLAY_BATCH_SIZE = 1
#: Total time budget of one day's replay (seconds); a replay that cannot fit is refused.
REPLAY_TIMEOUT_S = 1200.0
#: Share of rows the server may refuse (422, e.g. a category the model never saw) before
#: the replay counts as failed.
MAX_REJECTED_SHARE = 0.05
#: Labels of day D land with the traffic of day D + LABEL_DELAY_DAYS.
LABEL_DELAY_DAYS = 2

LABELS_PREFIX = "serving/labels"
#: Raw partitions the request rows are built from (airlines only feed an analysis column).
REQUEST_TABLES = ("flights", "weather", "planes")
#: Pauses before the retries of a request that met a 5xx/429 answer or a connection error.
RETRY_DELAYS_S = (0.2, 0.5, 1.0)
REQUEST_TIMEOUT_S = 10.0


class ReplayError(RuntimeError):
    """The day cannot be replayed or its labels cannot be landed; the message says why."""


class MissingRawError(ReplayError):
    """Raw partitions the day needs are not committed."""


class ServerUnavailableError(ReplayError):
    """The model server is down, serves no model, or kept failing after the retries."""

    def __init__(self, message: str, result: ReplayResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class RowsRejectedError(ReplayError):
    """The server refused more rows than tolerated (deterministic: a rerun would not help)."""


def labels_dir(day: dt.date) -> str:
    """Lake directory of the labels of ``day``."""
    return f"{LABELS_PREFIX}/dt={day.isoformat()}"


def require_raw(lake: Lake, day: dt.date, tables: Sequence[str] = REQUEST_TABLES) -> None:
    """:class:`MissingRawError` naming every partition of ``day`` that is not committed."""
    missing = lake.missing(partition_dir(t, day) for t in tables)
    if missing:
        raise MissingRawError(
            f"{len(missing)} raw partition(s) not committed: {', '.join(missing)}; "
            f"land {day.isoformat()} first (DAG raw_landing, or `airflow backfill create --dag-id "
            f"raw_landing --from-date {day.isoformat()} --to-date {day.isoformat()}`)"
        )


# ------------------------------------------------------------------------------------------
# Features: the Spark job's derivation, in pandas
# ------------------------------------------------------------------------------------------
def _read_raw(lake: Lake, table: str, day: dt.date, extra: Sequence[str] = ()) -> pd.DataFrame:
    """The job's read: only its columns (then ``extra``), integers as Int64, numbers as Float64."""
    frame = lake.read_frame(partition_dir(table, day))
    columns = job.RAW_COLUMNS[table]
    missing = [c for c in [*columns, *extra] if c not in frame.columns]
    if missing:
        raise ReplayError(f"raw/{table}/dt={day.isoformat()} lacks column(s) {', '.join(missing)}")
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


def _clean_flights(lake: Lake, day: dt.date, extra: Sequence[str] = ()) -> pd.DataFrame:
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
    flights = _clean_flights(lake, day)
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
        raise ReplayError(f"joining the dimensions changed the flights of {day.isoformat()}")

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
    :func:`served_features`). :class:`ReplayError` if it names a feature the job does not
    derive; :class:`MissingRawError` if the day's raw partitions are not committed.
    """
    unknown = [f for f in spec_features if f not in job.FEATURE_COLUMNS]
    if unknown:
        raise ReplayError(
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


# ------------------------------------------------------------------------------------------
# Sending
# ------------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    """What one replay did. ``sent``: rows offered to the server (retries not counted again)."""

    day: str
    rows: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    rate_per_s: float = 0.0
    batch_size: int = 1
    model_versions: list[str] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_server(server_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The server's ``/health`` if it is up and serves a model; :class:`ServerUnavailableError` if not."""
    import httpx

    try:
        response = httpx.get(f"{server_url}/health", timeout=timeout_s)
        response.raise_for_status()
        health = response.json()
    except (httpx.HTTPError, ValueError) as err:
        raise ServerUnavailableError(
            f"model server at {server_url} is not reachable ({type(err).__name__}: {err}); "
            "is it running? (`make up` starts it; MLP_HOST/MLP_SERVING_PORT name it)"
        ) from None
    if not health.get("ready"):
        raise ServerUnavailableError(
            f"model server at {server_url} has no model loaded "
            f"({health.get('last_reload_error') or 'nothing deployed yet'}); deploy a model first "
            "(DAG model_deployment)"
        )
    return health


def served_spec(lake: Lake, model: str, version: str):
    """Feature spec of a model version, read from its export in the serving location."""
    from mlpipeline.features import FeatureSpec
    from mlpipeline.serving import location
    from mlpipeline.serving.model import SPEC_PATH

    directory = location.version_dir(model, version)
    try:
        commit = lake.read_commit(directory)
    except LakeError as err:
        raise ReplayError(f"cannot read the served model's feature spec: {err}") from None
    spec_name = SPEC_PATH.as_posix()
    for name, rel in zip(commit.files, commit.file_paths(), strict=True):
        if name == spec_name:
            return FeatureSpec.from_json(lake.read_bytes(rel).decode())
    raise ReplayError(f"{lake.uri(directory)} holds no {spec_name}")


def served_features(lake: Lake, model: str, version: str) -> list[str]:
    """Feature list of the model version the server serves, read from its export in the lake."""
    return list(served_spec(lake, model, version).features)


def replay_day(
    server_url: str,
    rows: Sequence[dict[str, Any]],
    day: dt.date,
    rate_per_s: float,
    batch_size: int = 1,
    timeout_s: float = REPLAY_TIMEOUT_S,
    *,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    client: httpx.Client | None = None,
) -> ReplayResult:
    """POST ``rows`` to ``{server_url}/predict`` in batches, never faster than ``rate_per_s`` rows/s.

    Pacing: a batch of ``n`` rows is followed by at least ``n / rate_per_s`` seconds before the
    next one starts (no catch-up bursts), so the whole replay takes at least
    ``(len(rows) - last batch) / rate_per_s`` seconds. ``timeout_s`` bounds the total time: a
    replay that cannot fit at this rate is refused before the first request, and one that
    overruns stops with :class:`ServerUnavailableError`.

    A 5xx or 429 answer or a connection error is retried ``len(retry_delays_s)`` times; if it
    persists the replay stops with :class:`ServerUnavailableError` (the server is down or
    serves no model). Another 4xx answer (rows the model refuses) is not retried: its rows count as
    ``failed`` and the first reasons are kept in ``rejections``.
    """
    import httpx

    if rate_per_s <= 0:
        raise ReplayError(f"rate_per_s must be > 0, got {rate_per_s}")
    if batch_size < 1:
        raise ReplayError(f"batch_size must be >= 1, got {batch_size}")
    result = ReplayResult(day=day.isoformat(), rows=len(rows), rate_per_s=rate_per_s, batch_size=batch_size)
    needed = max(0, len(rows) - batch_size) / rate_per_s
    if needed > timeout_s:
        raise ReplayError(
            f"{len(rows)} rows at {rate_per_s} rows/s need {needed:.0f} s, more than the "
            f"{timeout_s:.0f} s allowed; raise the rate or the timeout"
        )
    owned = client is None
    client = client or httpx.Client(base_url=server_url, timeout=request_timeout_s)
    started = time.monotonic()
    deadline = started + timeout_s
    next_at = started
    versions: set[str] = set()
    try:
        for first in range(0, len(rows), batch_size):
            batch = list(rows[first : first + batch_size])
            pause = next_at - time.monotonic()
            if pause > 0:
                if time.monotonic() + pause > deadline:
                    break
                time.sleep(pause)
            sent_at = time.monotonic()
            next_at = sent_at + len(batch) / rate_per_s
            result.sent += len(batch)
            status, body = _post_with_retries(
                client, server_url, batch, day, result, deadline, request_timeout_s, retry_delays_s
            )
            if status == 200:
                result.ok += len(batch)
                versions.add(str(body.get("model_version")))
            else:
                result.failed += len(batch)
                if len(result.rejections) < 5:
                    result.rejections.append(
                        {
                            "status": status,
                            "detail": body.get("detail"),
                            "flight_keys": [r.get("flight_key") for r in batch[:3]],
                        }
                    )
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        result.model_versions = sorted(versions)
        if owned:
            client.close()
    if result.sent < len(rows):
        raise ServerUnavailableError(
            f"replay of {day.isoformat()} did not finish within {timeout_s:.0f} s: sent {result.sent} of "
            f"{len(rows)} rows (server too slow?)",
            result,
        )
    log.info(
        "replayed %s: %d rows sent, %d ok, %d failed in %.1f s (%d requests, %d retries)",
        result.day,
        result.sent,
        result.ok,
        result.failed,
        result.seconds,
        result.requests,
        result.retries,
    )
    return result


def _post_with_retries(
    client: httpx.Client,
    server_url: str,
    batch: list[dict[str, Any]],
    day: dt.date,
    result: ReplayResult,
    deadline: float,
    request_timeout_s: float,
    retry_delays_s: Sequence[float],
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a 2xx/4xx answer; :class:`ServerUnavailableError` when retries run out."""
    import httpx

    payload = json.dumps({"rows": batch, "request_date": day.isoformat()}, allow_nan=False)
    headers = {"content-type": "application/json"}
    problem = ""
    for attempt in range(len(retry_delays_s) + 1):
        if attempt:
            delay = retry_delays_s[attempt - 1]
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            result.retries += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        result.requests += 1
        try:
            response = client.post(
                "/predict", content=payload, headers=headers, timeout=min(request_timeout_s, remaining)
            )
        except httpx.TransportError as err:
            problem = f"{type(err).__name__}: {err}"
            continue
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:500]}
        if not isinstance(body, dict):
            body = {"detail": body}
        # 503 = no model (a deployment in progress), 5xx = server trouble, 429 = overloaded
        if response.status_code >= 500 or response.status_code == 429:
            problem = f"HTTP {response.status_code}: {body.get('detail')}"
            continue
        return response.status_code, body
    raise ServerUnavailableError(
        f"model server at {server_url} kept failing while replaying {day.isoformat()} "
        f"({problem or 'time budget spent'}) after {result.sent - len(batch)} of {result.rows} rows; "
        f"{result.ok} accepted so far",
        result,
    )


def replay_traffic(
    lake: Lake,
    server_url: str,
    day: dt.date,
    rate_per_s: float = REPLAY_RATE_PER_S,
    batch_size: int = REPLAY_BATCH_SIZE,
    timeout_s: float = REPLAY_TIMEOUT_S,
    max_rejected_share: float = MAX_REJECTED_SHARE,
) -> ReplayResult:
    """Day D's flights to the server: raw check, server check, the served model's features, replay.

    :class:`RowsRejectedError` if the server refused more than ``max_rejected_share`` of the
    rows (the reasons are in the message).
    """
    require_raw(lake, day)
    health = check_server(server_url)
    features = served_features(lake, str(health["model"]), str(health["version"]))
    rows = request_rows_for_day(lake, day, features)
    if not rows:
        raise ReplayError(f"raw/flights/dt={day.isoformat()} holds no flights to replay")
    result = replay_day(server_url, rows, day, rate_per_s, batch_size, timeout_s)
    if result.failed > max_rejected_share * result.sent:
        raise RowsRejectedError(
            f"the server refused {result.failed} of {result.sent} rows of {day.isoformat()} (more than "
            f"{max_rejected_share:.0%}); first reasons: {json.dumps(result.rejections)[:1500]}"
        )
    return result


# ------------------------------------------------------------------------------------------
# Delayed labels
# ------------------------------------------------------------------------------------------
def labels_for_day(lake: Lake, day: dt.date) -> pd.DataFrame:
    """The true outcome of every flight of ``day`` (one row per flight key, as in the job)."""
    import pandas as pd

    require_raw(lake, day, ("flights",))
    flights = _clean_flights(lake, day, extra=("dep_time",))
    arr_delay = flights["arr_delay"].astype("Float64")
    delayed = (arr_delay > job.LABEL_THRESHOLD_MINUTES).astype("Int32")  # null stays null
    cancelled = flights["dep_time"].isna().to_numpy(dtype=bool)
    return pd.DataFrame(
        {
            "flight_key": flights["flight_key"],
            "flight_date": flights["flight_date"],
            "arr_delay": arr_delay,
            "is_delayed": delayed,
            "cancelled": cancelled,
            "diverted": ~cancelled & arr_delay.isna().to_numpy(dtype=bool),
        }
    )


def land_labels(lake: Lake, day: dt.date) -> dict[str, Any]:
    """Publish the labels of ``day`` to ``serving/labels/dt=D/`` atomically (a rerun replaces them)."""
    labels = labels_for_day(lake, day)
    if labels.empty:
        raise ReplayError(f"raw/flights/dt={day.isoformat()} holds no flights: no labels to land")
    keyed = labels[labels["flight_key"].notna()]
    summary = {
        "day": day.isoformat(),
        "rows": len(keyed),
        "labelled": int(keyed["is_delayed"].notna().sum()),
        "delayed": int(keyed["is_delayed"].fillna(0).sum()),
        "cancelled": int(keyed["cancelled"].sum()),
        "diverted": int(keyed["diverted"].sum()),
        "without_key": len(labels) - len(keyed),
    }
    commit = lake.publish_frames(labels_dir(day), {"labels": keyed.reset_index(drop=True)}, meta=summary)
    return summary | {"path": lake.uri(commit.directory)}


def labels_day_for(traffic_day: dt.date, data_start: dt.date) -> dt.date | None:
    """The day whose labels land with ``traffic_day``'s run; None when it predates the data."""
    day = traffic_day - dt.timedelta(days=LABEL_DELAY_DAYS)
    return day if day >= data_start else None
