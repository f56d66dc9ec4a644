"""Traffic replay and delayed labels: the demo's production traffic and its ground truth.

The demo has no real clients, so the flights *scheduled* on day D are sent to the model
server as prediction requests, at a bounded rate, with ``request_date`` = D (the prediction
log files them under ``serving/predictions/dt=D/``). The true outcomes arrive later, as they
would in production: :func:`land_labels` writes them to ``serving/labels/dt=D/``, and the
``traffic_replay`` DAG lands day D's labels ``LABEL_DELAY_DAYS`` days after its traffic.

Request rows come from :func:`mlpipeline.serving.features.request_rows_for_day` (the Spark
job's feature derivation in pandas), with only the features the served model's spec lists.

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
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipeline import locations
from mlpipeline.lake import Lake
from mlpipeline.serving.features import (
    FeatureDerivationError,
    clean_flights,
    request_rows_for_day,
    require_raw,
)
from mlpipeline.serving.location import served_features
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

#: Pauses before the retries of a request that met a 5xx/429 answer or a connection error.
RETRY_DELAYS_S = (0.2, 0.5, 1.0)
REQUEST_TIMEOUT_S = 10.0


class ReplayError(FeatureDerivationError):
    """The day cannot be replayed or its labels cannot be landed; the message says why.

    A :class:`~mlpipeline.serving.features.FeatureDerivationError` (as is
    :class:`~mlpipeline.serving.features.MissingRawError`): one ``except`` catches both.
    """


class ServerUnavailableError(ReplayError):
    """The model server is down, serves no model, or kept failing after the retries."""

    def __init__(self, message: str, result: ReplayResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class RowsRejectedError(ReplayError):
    """The server refused more rows than tolerated (deterministic: a rerun would not help)."""


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
    #: seconds until the server had written every answered row to the log (None: not in time)
    log_flushed_s: float | None = None

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


#: How long the replay waits for the server to write what it answered to the prediction log.
LOG_FLUSH_TIMEOUT_S = 30.0
_METRIC_LINE = re.compile(r"^(mlp_prediction_log_(?:pending|spooled)_rows) ([0-9.eE+-]+)$", re.MULTILINE)


def wait_for_log_flush(server_url: str, timeout_s: float = LOG_FLUSH_TIMEOUT_S) -> float | None:
    """Seconds until the server's prediction log holds nothing in memory or in its local spool
    (``/metrics``), i.e. every prediction it answered is in the lake; None if not within
    ``timeout_s`` (logged: the server keeps them and writes them when it can).

    The day's traffic ends here: monitoring's run for the day reads the log right after the
    replay (the demo compresses the day), and the server flushes every ``serving_log_flush_s``
    (5 s) or 500 rows, so without this wait it judged the day on the rows flushed so far (619 of
    930 seen at 200 rows/s).
    """
    import httpx

    started = time.monotonic()
    while True:
        try:
            text = httpx.get(f"{server_url}/metrics", timeout=REQUEST_TIMEOUT_S).text
            waiting = {name: float(value) for name, value in _METRIC_LINE.findall(text)}
        except httpx.HTTPError as err:
            waiting = {"metrics unavailable": 1.0}
            log.debug("metrics: %s", err)
        if waiting and not any(waiting.values()):
            return round(time.monotonic() - started, 3)
        if time.monotonic() - started > timeout_s:
            log.warning(
                "the server's prediction log still holds rows after %.0f s (%s); monitoring may see "
                "part of the day until it writes them",
                timeout_s,
                waiting,
            )
            return None
        time.sleep(0.25)


def replay_traffic(
    lake: Lake,
    server_url: str,
    day: dt.date,
    rate_per_s: float = REPLAY_RATE_PER_S,
    batch_size: int = REPLAY_BATCH_SIZE,
    timeout_s: float = REPLAY_TIMEOUT_S,
    max_rejected_share: float = MAX_REJECTED_SHARE,
    log_flush_timeout_s: float = LOG_FLUSH_TIMEOUT_S,
) -> ReplayResult:
    """Day D's flights to the server: raw check, server check, the served model's features,
    replay, then the server's prediction log written (:func:`wait_for_log_flush`).

    :class:`RowsRejectedError` if the server refused more than ``max_rejected_share`` of the
    rows (the reasons are in the message).
    """
    require_raw(lake, day)
    health = check_server(server_url)
    features = served_features(lake, str(health["model"]), str(health["version"]))
    rows = request_rows_for_day(lake, day, features)
    if not rows:
        raise ReplayError(f"{locations.raw_partition('flights', day)} holds no flights to replay")
    result = replay_day(server_url, rows, day, rate_per_s, batch_size, timeout_s)
    result.log_flushed_s = wait_for_log_flush(server_url, log_flush_timeout_s)
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
    flights = clean_flights(lake, day, extra=("dep_time",))
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
        raise ReplayError(f"{locations.raw_partition('flights', day)} holds no flights: no labels to land")
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
    commit = lake.publish_frames(
        locations.labels_dir(day), {"labels": keyed.reset_index(drop=True)}, meta=summary
    )
    return summary | {"path": lake.uri(commit.directory)}


def labels_day_for(traffic_day: dt.date, data_start: dt.date) -> dt.date | None:
    """The day whose labels land with ``traffic_day``'s run; None when it predates the data."""
    day = traffic_day - dt.timedelta(days=LABEL_DELAY_DAYS)
    return day if day >= data_start else None
