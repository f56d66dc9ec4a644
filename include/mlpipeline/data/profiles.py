"""Each raw day against its history (the idea of Deequ's anomaly detection and TFDV's drift).

A profile per raw day (row counts, null share per column, distinct counts, share of each
categorical value, numeric quantiles, the label rate) is computed once, the first time the
day is used, and kept at ``raw/_profiles/dt=D/<hash>.json``; the hash is that of the day's
committed flights and weather partitions, so a re-landed day gets a new profile.

A day is judged against the trailing ``history.days`` days before it (at least
``history.min_days`` profiles, otherwise it is not judged): a statistic fails when it lies
more than ``k`` robust scales from the history's median, the scale being
``max(1.4826·MAD, floor_abs, floor_rel·|median|)``; ``k`` and the floors per kind of statistic
come from how 2013 itself varies (no real 2013 day is blocked).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import statistics
from typing import TYPE_CHECKING, Any

from mlpipeline import locations
from mlpipeline.spark_jobs.build_dataset import WEATHER_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import HistoryConfig

PROFILE_VERSION = 1
NULL_COLUMNS = {
    "flights": ("dep_time", "dep_delay", "arr_time", "arr_delay", "tailnum", "air_time"),
    "weather": WEATHER_COLUMNS,  # the weather columns the dataset job joins
}
DISTINCT_COLUMNS = {"flights": ("carrier", "tailnum", "dest", "flight"), "weather": ("origin",)}
SHARE_COLUMNS = {"flights": ("carrier", "origin")}
QUANTILE_COLUMNS = {
    "flights": ("distance", "air_time", "arr_delay", "dep_delay", "sched_dep_time"),
    "weather": ("temp", "dewp", "humid", "wind_speed", "pressure", "visib"),
}
QUANTILES = (0.1, 0.5, 0.9)
LABEL_MINUTES = 15


def profile_day(flights: pd.DataFrame, weather: pd.DataFrame) -> dict[str, float]:
    """The statistics of one raw day, flat: ``kind|table.column|statistic`` → value."""
    stats: dict[str, float] = {}
    tables = {"flights": flights, "weather": weather}
    for table, frame in tables.items():
        stats[f"rows|{table}|rows"] = float(len(frame))
        for column in NULL_COLUMNS[table]:
            if column in frame and len(frame):
                stats[f"null|{table}.{column}|null_share"] = float(frame[column].isna().mean())
        for column in DISTINCT_COLUMNS.get(table, ()):
            if column in frame:
                stats[f"distinct|{table}.{column}|distinct"] = float(frame[column].nunique())
        for column in SHARE_COLUMNS.get(table, ()):
            if column in frame and len(frame):
                for value, share in frame[column].value_counts(normalize=True).items():
                    stats[f"share|{table}.{column}|share[{value}]"] = float(share)
        for column in QUANTILE_COLUMNS.get(table, ()):
            values = frame[column].dropna().astype("float64") if column in frame else None
            if values is not None and len(values):
                for q, v in zip(QUANTILES, values.quantile(list(QUANTILES)), strict=True):
                    stats[f"quantile|{table}.{column}|q{int(q * 100)}"] = float(v)
    labelled = flights["arr_delay"].dropna() if "arr_delay" in flights else []
    if len(labelled):
        stats["label|flights.arr_delay|label_rate"] = float(
            (labelled.astype("float64") > LABEL_MINUTES).mean()
        )
    return stats


def partition_hash(lake: Lake, day: dt.date) -> str:
    """Hash of the day's committed flights and weather partitions (attempt and files)."""
    parts = []
    for table in ("flights", "weather"):
        commit = lake.read_commit(locations.raw_partition(table, day))
        parts.append([table, commit.attempt, list(commit.files)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def load_or_compute(
    lake: Lake, day: dt.date, frames: dict[str, pd.DataFrame] | None = None
) -> dict[str, float] | None:
    """The stored profile of ``day`` (computed and stored the first time); ``None`` if not landed."""
    from mlpipeline.lake import LakeError

    try:
        digest = partition_hash(lake, day)
    except LakeError:  # a day not (fully) landed has no profile
        return None
    path = locations.raw_profile(day, digest)
    if lake.exists(path):
        body = lake.read_json(path)
        if body.get("version") == PROFILE_VERSION:
            return body["stats"]
    if frames is None:
        frames = {t: lake.read_frame(locations.raw_partition(t, day)) for t in ("flights", "weather")}
    stats = profile_day(frames["flights"], frames["weather"])
    lake.write_json(
        path, {"version": PROFILE_VERSION, "day": day.isoformat(), "hash": digest, "stats": stats}
    )
    return stats


def _kind(key: str) -> str:
    return key.split("|", 1)[0]


def rule_for(key: str, cfg: HistoryConfig):
    """The rule of a statistic: ``kind:table.column`` if the settings name it, else its kind's."""
    kind, column, _ = key.split("|")
    return cfg.rules.get(f"{kind}:{column}") or cfg.rules[kind]


def compare(
    today: dict[str, float], history: list[dict[str, float]], cfg: HistoryConfig
) -> list[dict[str, Any]]:
    """The statistics of ``today`` outside the band its history allows (empty: not judged)."""
    if len(history) < cfg.min_days:
        return []
    out = []
    share_keys = {k for p in [today, *history] for k in p if _kind(k) == "share"}
    for key in sorted(set(today) | share_keys):
        kind = _kind(key)
        rule = rule_for(key, cfg)
        default = 0.0 if kind == "share" else None
        value = today.get(key, default)
        past = [p.get(key, default) for p in history]
        past = [v for v in past if v is not None]
        if value is None or len(past) < cfg.min_days:
            continue
        median = statistics.median(past)
        mad = statistics.median(abs(v - median) for v in past)
        scale = max(1.4826 * mad, rule.floor_abs, rule.floor_rel * abs(median))
        score = abs(value - median) / scale
        if score > rule.k:
            _, column, statistic = key.split("|")
            out.append(
                {
                    "column": column,
                    "statistic": statistic,
                    "today": round(value, 4),
                    "history_range": [round(min(past), 4), round(max(past), 4)],
                    "allowed": [round(median - rule.k * scale, 4), round(median + rule.k * scale, 4)],
                    "history_days": len(past),
                    "score": round(score, 2),
                }
            )
    return out


def scores(today: dict[str, float], history: list[dict[str, float]], cfg: HistoryConfig) -> dict[str, float]:
    """Score of every statistic of ``today`` (deviations in robust scales), for calibration."""
    out = {}
    for key in today:
        rule = rule_for(key, cfg)
        past = [p[key] for p in history if key in p]
        if len(past) < cfg.min_days:
            continue
        median = statistics.median(past)
        mad = statistics.median(abs(v - median) for v in past)
        out[key] = abs(today[key] - median) / max(1.4826 * mad, rule.floor_abs, rule.floor_rel * abs(median))
    return out


def check_days(
    profiles: dict[dt.date, dict[str, float] | None], judged: list[dt.date], cfg: HistoryConfig
) -> tuple[list[dict[str, Any]], int]:
    """History failures of the ``judged`` days (profiles must hold their trailing days)."""
    failures, evaluated = [], 0
    for day in judged:
        today = profiles.get(day)
        if today is None:
            continue
        history = [
            p for i in range(1, cfg.days + 1) if (p := profiles.get(day - dt.timedelta(days=i))) is not None
        ]
        evaluated += 1
        for item in compare(today, history, cfg):
            failures.append(
                {
                    "check_class": "history",
                    "batch": "raw/profile",
                    "expectation": f"{item['statistic']}_within_history",
                    "column": item["column"],
                    "day": day.isoformat(),
                    "kwargs": {"allowed": item["allowed"], "history_days": item["history_days"]},
                    "observed": {
                        "today": item["today"],
                        "history_range": item["history_range"],
                        "score": item["score"],
                    },
                }
            )
    return failures, evaluated
