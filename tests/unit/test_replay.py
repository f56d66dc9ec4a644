"""Traffic replay and delayed labels: rows from real landed days (equal to the Spark job's
features), replay against the real server process, labels in the lake, and the DAG."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pendulum
import pytest
from ports import free_port
from serving_fixtures import FEATURES, real_rows, save_model

from mlpipeline import locations
from mlpipeline.data import nycflights13_source as source
from mlpipeline.data.landing import land_range, partition_dir
from mlpipeline.lake import Lake
from mlpipeline.local import replay
from mlpipeline.serving import features, location
from mlpipeline.serving.prediction_log import read_day
from mlpipeline.spark_jobs import build_dataset as job

DAY = dt.date(2013, 1, 16)  # a Wednesday: 901 flights, 46 cancelled, 2 diverted
LABEL_DAY = DAY - dt.timedelta(days=replay.LABEL_DELAY_DAYS)
MODEL = "flight_delay"  # the pipeline's model name: the server process serves it
TOKEN = "replay-test-token"
JOB_SCRIPT = Path(job.__file__)


def source_flights(day: dt.date) -> pd.DataFrame:
    flights = source.read_table("flights")
    mask = (flights["year"] == day.year) & (flights["month"] == day.month) & (flights["day"] == day.day)
    return flights[mask].reset_index(drop=True)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """Real days LABEL_DAY..DAY landed once; tests work on copies."""
    root = tmp_path_factory.mktemp("raw-lake")
    land_range(Lake.from_uri(f"file://{root}"), LABEL_DAY, DAY)
    return root


@pytest.fixture
def day_lake(raw_root, tmp_path) -> Lake:
    shutil.copytree(raw_root, tmp_path / "lake")
    return Lake.from_uri(f"file://{tmp_path / 'lake'}")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A small real model that knows every category of January (trained on all its flights)."""
    root = tmp_path_factory.mktemp("replay-models")
    return {"1": save_model(root / "v1", rounds=20, seed=0, frame=real_rows(n=100_000))}


class Server:
    def __init__(self, url: str, port: int, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.port, self.proc, self.log = url, port, proc, log

    def stop(self) -> None:
        """SIGTERM: the server flushes its prediction log before it exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=30) in (0, -signal.SIGTERM), self.log.read_text()[-3000:]


@contextlib.contextmanager
def model_server(lake: Lake, state: Path, model_dir: Path | None, flush_s: float = 60) -> Iterator[Server]:
    """The real server process (`python -m mlpipeline.serving`) on a free port, on ``lake``
    (its prediction log flushed every ``flush_s``; 60: only the shutdown flushes, counts are exact)."""
    if model_dir is not None:
        location.export_model_dir(lake, MODEL, "1", model_dir, {"source": "test"})
        location.point_to(lake, MODEL, "1", reason="test")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_")}
    env.update(
        {
            "MLP_STATE_DIR": str(state),
            "MLP_LAKE_URI": lake.root_uri,
            "MLP_SERVING_PORT": str(port),
            "MLP_SERVING_ADMIN_TOKEN": TOKEN,
            "MLP_SERVING_POLL_S": "0",
            "MLP_SERVING_LOG_FLUSH_S": str(flush_s),
            "MLP_SERVING_LOG_FLUSH_ROWS": "100000",
        }
    )
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlpipeline.serving"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        server = Server(f"http://127.0.0.1:{port}", port, proc, log_path)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    health = httpx.get(f"{server.url}/health", timeout=1).json()
                    if health["ready"] or model_dir is None:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield server
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------
# Request rows
# ------------------------------------------------------------------------------------------
def test_rows_for_a_real_landed_day(day_lake):
    rows = features.request_rows_for_day(day_lake, DAY, list(job.FEATURE_COLUMNS))
    flights = source_flights(DAY)
    assert len(rows) == len(flights) == 901
    keys = [r["flight_key"] for r in rows]
    assert len(set(keys)) == len(keys)
    # cancelled and diverted flights are traffic too
    cancelled = flights[flights["dep_time"].isna()]
    assert len(cancelled) == 46
    assert {
        f"{DAY.isoformat()}_{c}_{n}_{o}_{s:04d}"
        for c, n, o, s in zip(
            cancelled["carrier"],
            cancelled["flight"],
            cancelled["origin"],
            cancelled["sched_dep_time"],
            strict=True,
        )
    } <= set(keys)
    # JSON-safe: plain types, None for missing, nothing else
    json.dumps(rows, allow_nan=False)
    for row in rows:
        assert set(row) == {*job.FEATURE_COLUMNS, "flight_key"}
        for name in ("month", "day_of_week", "sched_dep_hour", "sched_dep_minute", "plane_age"):
            assert row[name] is None or type(row[name]) is int, (name, row[name])
        for name in ("distance", "temp", "wind_gust"):
            assert row[name] is None or type(row[name]) is float, (name, row[name])
        for name in job.CATEGORICAL_FEATURES:
            assert type(row[name]) is str
    assert {r["day_of_week"] for r in rows} == {3}  # ISO: Wednesday
    assert any(r["wind_gust"] is None for r in rows)
    assert any(r["plane_type"] == job.UNKNOWN and r["plane_age"] is None for r in rows)
    # traffic arrives in scheduled-departure order
    times = [r["sched_dep_hour"] * 100 + r["sched_dep_minute"] for r in rows]
    assert times == sorted(times)


def test_one_row_derived_by_hand(day_lake):
    flights = source_flights(DAY)
    planes = source.read_table("planes").set_index("tailnum")
    weather = source.read_table("weather")
    flight = flights[flights["tailnum"].isin(planes.index) & flights["arr_delay"].notna()].iloc[0]
    plane = planes.loc[flight["tailnum"]]
    hour = weather[(weather["origin"] == flight["origin"]) & (weather["time_hour"] == flight["time_hour"])]
    assert len(hour) == 1
    key = (
        f"{DAY.isoformat()}_{flight['carrier']}_{flight['flight']}_{flight['origin']}_"
        f"{flight['sched_dep_time']:04d}"
    )
    rows = {
        r["flight_key"]: r for r in features.request_rows_for_day(day_lake, DAY, [*FEATURES, "plane_age"])
    }
    row = rows[key]
    assert row == {
        "flight_key": key,
        "month": 1,
        "day_of_week": 3,
        "sched_dep_hour": int(flight["sched_dep_time"]) // 100,
        "sched_dep_minute": int(flight["sched_dep_time"]) % 100,
        "carrier": flight["carrier"],
        "origin": flight["origin"],
        "dest": flight["dest"],
        "distance": float(flight["distance"]),
        "temp": float(hour["temp"].iloc[0]),
        "plane_age": 2013 - int(plane["year"]),
    }


def test_rows_refuse_unknown_features_and_missing_raw(day_lake):
    with pytest.raises(
        features.FeatureDerivationError, match=r"feature\(s\) wingspan, which the dataset job"
    ):
        features.request_rows_for_day(day_lake, DAY, ["month", "wingspan"])
    with pytest.raises(features.MissingRawError) as err:
        features.request_rows_for_day(day_lake, dt.date(2013, 1, 20), FEATURES)
    assert "raw/flights/dt=2013-01-20, raw/weather/dt=2013-01-20, raw/planes/dt=2013-01-20" in str(err.value)
    day_lake.delete(partition_dir("weather", DAY) + "/_SUCCESS")
    with pytest.raises(
        features.MissingRawError, match=r"1 raw partition\(s\) not committed: raw/weather/dt="
    ):
        features.request_rows_for_day(day_lake, DAY, FEATURES)


@pytest.mark.spark
def test_replay_rows_equal_the_spark_job_output(raw_root, tmp_path, spark_connect_server):
    """The replay's derivation and the Spark job's agree on every feature of every flight."""
    lake = Lake.from_uri(f"file://{raw_root}")
    output = tmp_path / "staging"
    proc = subprocess.run(
        [
            sys.executable, str(JOB_SCRIPT),
            "--raw-root", str(raw_root / "raw"),
            "--end-date", DAY.isoformat(),
            "--window-days", "1",
            "--output", str(output),
            "--validation-fraction", "0.3",
        ],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SPARK_REMOTE": spark_connect_server},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    spark = pd.concat([pd.read_parquet(output / s) for s in ("train", "validation")], ignore_index=True)
    assert len(spark) == 853  # the labelled flights
    rows = {r["flight_key"]: r for r in features.request_rows_for_day(lake, DAY, list(job.FEATURE_COLUMNS))}
    # the replay sends exactly the job's flights plus those without a label
    unlabelled = source_flights(DAY)["arr_delay"].isna().sum()
    assert set(spark["flight_key"]) <= set(rows)
    assert len(rows) - len(spark) == unlabelled
    mismatches = []
    for record in spark.to_dict(orient="records"):
        row = rows[record["flight_key"]]
        for feature in job.FEATURE_COLUMNS:
            want, got = record[feature], row[feature]
            if pd.isna(want):
                ok = got is None
            elif feature in job.CATEGORICAL_FEATURES:
                ok = got == want
            else:
                ok = got is not None and math.isclose(got, float(want), rel_tol=0, abs_tol=1e-9)
            if not ok:
                mismatches.append((record["flight_key"], feature, want, got))
    assert mismatches == []
    # the comparison saw nulls and UNKNOWNs, not only easy values
    assert spark["wind_gust"].isna().any()
    assert spark["plane_age"].isna().any()
    assert (spark["plane_type"] == job.UNKNOWN).any()


# ------------------------------------------------------------------------------------------
# Replay against the real server
# ------------------------------------------------------------------------------------------
def test_replay_against_a_real_server(day_lake, model_dirs, tmp_path):
    rows = features.request_rows_for_day(day_lake, DAY, FEATURES)
    rate = 300.0
    with model_server(day_lake, tmp_path / "state", model_dirs["1"]) as server:
        assert replay.check_server(server.url)["version"] == "1"
        assert location.served_features(day_lake, MODEL, "1") == FEATURES
        result = replay.replay_day(server.url, rows, DAY, rate_per_s=rate, batch_size=1, timeout_s=60)
        assert (result.sent, result.ok, result.failed) == (len(rows), len(rows), 0)
        assert result.requests == len(rows)
        assert result.retries == 0
        assert result.model_versions == ["1"]
        # the rate bound: never faster than `rate` rows per second
        assert result.seconds >= (len(rows) - 1) / rate - 0.01
        # refused rows (422) count as failed, are not retried, and keep the server's reason
        bad = [{**rows[0], "carrier": "ZZ"}, rows[1]]
        refused = replay.replay_day(server.url, bad, DAY, rate_per_s=1000, batch_size=1, timeout_s=10)
        assert (refused.ok, refused.failed, refused.requests, refused.retries) == (1, 1, 2, 0)
        assert refused.rejections[0]["status"] == 422
        assert "unknown category 'ZZ'" in json.dumps(refused.rejections[0]["detail"])
        server.stop()
    logged = read_day(day_lake, DAY)
    assert len(logged) == len(rows) + 1  # the refused row is not logged
    assert set(logged["flight_key"]) == {r["flight_key"] for r in rows}
    assert set(logged["dt"]) == {DAY.isoformat()}
    # the server saw at most `rate` rows in any one-second window (plus jitter)
    ts = pd.to_datetime(logged["ts"])
    seen = (ts - ts.min()).dt.total_seconds().sort_values().to_numpy()
    window_counts = seen.searchsorted(seen + 1.0) - range(len(seen))
    assert max(window_counts) <= rate * 1.1 + 2


def test_batches_keep_the_rate_and_a_time_budget(day_lake, model_dirs, tmp_path):
    rows = features.request_rows_for_day(day_lake, DAY, FEATURES)
    with model_server(day_lake, tmp_path / "state", model_dirs["1"]) as server:
        result = replay.replay_day(server.url, rows, DAY, rate_per_s=1000, batch_size=50, timeout_s=60)
        assert (result.ok, result.failed, result.requests) == (len(rows), 0, math.ceil(len(rows) / 50))
        assert result.seconds >= (len(rows) - 50) / 1000 - 0.01
        # a replay that cannot fit its time budget is refused before the first request
        with pytest.raises(
            replay.ReplayError, match=r"901 rows at 10 rows/s need 90 s, more than the 5 s allowed"
        ):
            replay.replay_day(server.url, rows, DAY, rate_per_s=10, timeout_s=5)


def test_the_replay_ends_when_the_server_has_logged_every_answered_row(day_lake, model_dirs, tmp_path):
    """Monitoring reads the day's log right after the replay: the replay waits for the server's
    flush (every 2 s here, 500 rows), so the lake holds the whole day when it returns."""
    with model_server(day_lake, tmp_path / "state", model_dirs["1"], flush_s=2) as server:
        result = replay.replay_traffic(day_lake, server.url, DAY, rate_per_s=1000)
        assert result.log_flushed_s is not None
        assert result.log_flushed_s <= 10
        assert len(read_day(day_lake, DAY)) == result.ok == 901


def test_server_without_a_model_or_down_fails_clearly(day_lake, tmp_path):
    rows = features.request_rows_for_day(day_lake, DAY, FEATURES)[:3]
    with model_server(day_lake, tmp_path / "state", model_dir=None) as server:
        with pytest.raises(replay.ServerUnavailableError, match=r"has no model loaded \(.*nothing deployed"):
            replay.check_server(server.url)
        with pytest.raises(replay.ServerUnavailableError) as err:
            replay.replay_day(server.url, rows, DAY, rate_per_s=100, retry_delays_s=(0.05, 0.05))
        assert "HTTP 503: no model loaded" in str(err.value)
        assert (err.value.result.requests, err.value.result.retries, err.value.result.ok) == (3, 2, 0)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(replay.ServerUnavailableError, match=f"model server at {down} is not reachable"):
        replay.check_server(down)
    with pytest.raises(replay.ServerUnavailableError, match=r"kept failing .*ConnectError"):
        replay.replay_day(down, rows, DAY, rate_per_s=100, retry_delays_s=(0.05,))


def test_replay_traffic_refuses_too_many_rejected_rows(day_lake, model_dirs, tmp_path):
    """Upstream sends a carrier the served model never saw on 60 flights: the replay fails."""
    flights = day_lake.read_frame(partition_dir("flights", DAY))
    flights.loc[flights.index[:60], "carrier"] = "ZZ"
    day_lake.publish_frames(partition_dir("flights", DAY), {"part-0": flights})
    assert 60 / 901 > replay.MAX_REJECTED_SHARE
    with model_server(day_lake, tmp_path / "state", model_dirs["1"]) as server:
        with pytest.raises(replay.RowsRejectedError) as err:
            replay.replay_traffic(day_lake, server.url, DAY, rate_per_s=1000, log_flush_timeout_s=0.5)
        # within the tolerance the same day passes, the refused rows counted
        result = replay.replay_traffic(
            day_lake, server.url, DAY, rate_per_s=1000, max_rejected_share=0.1, log_flush_timeout_s=0.5
        )
        assert (result.sent, result.ok, result.failed) == (901, 841, 60)
        assert result.log_flushed_s is None  # this server flushes at shutdown only: the wait gives up
    message = str(err.value)
    assert f"the server refused 60 of 901 rows of {DAY.isoformat()} (more than 5%)" in message
    assert "unknown category 'ZZ'" in message


# ------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------
def test_labels_land_atomically_with_the_right_counts(day_lake):
    flights = source_flights(LABEL_DAY)
    summary = replay.land_labels(day_lake, LABEL_DAY)
    directory = locations.labels_dir(LABEL_DAY)
    assert directory == f"serving/labels/dt={LABEL_DAY.isoformat()}"
    assert day_lake.committed_partitions("serving/labels") == [LABEL_DAY.isoformat()]
    labelled = flights["arr_delay"].notna()
    assert summary | {"path": ""} == {
        "day": LABEL_DAY.isoformat(),
        "rows": len(flights),
        "labelled": int(labelled.sum()),
        "delayed": int((flights["arr_delay"] > 15).sum()),
        "cancelled": int(flights["dep_time"].isna().sum()),
        "diverted": int((flights["dep_time"].notna() & flights["arr_delay"].isna()).sum()),
        "without_key": 0,
        "path": "",
    }
    commit = day_lake.read_commit(directory)
    assert commit.files == ("labels.parquet",)
    assert commit.meta["rows"] == len(flights)
    labels = day_lake.read_frame(directory)
    assert list(labels.columns) == [
        "flight_key", "flight_date", "arr_delay", "is_delayed", "cancelled", "diverted"
    ]  # fmt: skip
    assert labels["flight_key"].is_unique
    assert labels.loc[labels["arr_delay"].isna(), "is_delayed"].isna().all()
    assert (labels["is_delayed"].dropna() == (labels["arr_delay"].dropna() > 15).astype(int)).all()
    assert set(labels["flight_date"]) == {LABEL_DAY}
    # a rerun replaces the commit as a whole: same content, one attempt left
    again = replay.land_labels(day_lake, LABEL_DAY)
    assert again == summary
    assert day_lake.read_commit(directory).attempt != commit.attempt
    assert day_lake.list_dirs(f"{directory}/_attempts") == [day_lake.read_commit(directory).attempt]
    assert day_lake.read_frame(directory).equals(labels)
    with pytest.raises(features.MissingRawError, match="raw/flights/dt=2013-01-20"):
        replay.land_labels(day_lake, dt.date(2013, 1, 20))


def test_labels_arrive_later_than_the_traffic():
    start = dt.date(2013, 1, 1)
    assert replay.labels_day_for(dt.date(2013, 1, 16), start) == dt.date(2013, 1, 14)
    assert replay.labels_day_for(dt.date(2013, 1, 3), start) == start
    assert replay.labels_day_for(dt.date(2013, 1, 2), start) is None


# ------------------------------------------------------------------------------------------
# The DAG
# ------------------------------------------------------------------------------------------
def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    from mlpipeline.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "traffic_replay.py"))
    assert bag.import_errors == {}
    return bag.dags["traffic_replay"]


def run_for_day(dag, day: dt.date, **conf):
    """A manual run whose data interval is ``[day, day+1)`` (dated day+1, see test_raw_landing_dag)."""
    return dag.test(
        logical_date=pendulum.datetime(day.year, day.month, day.day, tz="UTC").add(days=1), run_conf=conf
    )


@pytest.mark.metadata
def test_dag_replays_a_day_and_lands_its_delayed_labels(
    airflow_db, day_lake, model_dirs, settings_env, tmp_path, capfd
):
    with model_server(day_lake, tmp_path / "server", model_dirs["1"]) as server:
        settings_env(lake_uri=day_lake.root_uri, serving_port=server.port, state_dir=tmp_path / "state")
        run = run_for_day(load_dag(), DAY, rate_per_s=500, batch_size=10)
        assert run.state == "success"
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert states == {"replay_traffic": "success", "land_delayed_labels": "success"}
        server.stop()
    logged = read_day(day_lake, DAY)
    assert len(logged) == 901
    assert logged["flight_key"].is_unique
    assert day_lake.committed_partitions("serving/labels") == [LABEL_DAY.isoformat()]
    assert len(day_lake.read_frame(locations.labels_dir(LABEL_DAY))) == len(source_flights(LABEL_DAY))

    # The first days of the range have no labels to land yet (skipped), and a server that is
    # down fails the replay with the reason.
    capfd.readouterr()
    settings_env(data_start=(DAY - dt.timedelta(days=1)).isoformat(), serving_port=free_port())
    dag = load_dag()
    for task in dag.tasks:
        task.retries = 0  # dag.test() would otherwise wait out the retry delays
    run = run_for_day(dag, DAY)
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"replay_traffic": "failed", "land_delayed_labels": "skipped"}
    out, err = capfd.readouterr()
    assert "is not reachable" in out + err
    assert "labels land 2 days after the traffic" in out + err
    assert day_lake.committed_partitions("serving/labels") == [LABEL_DAY.isoformat()]
