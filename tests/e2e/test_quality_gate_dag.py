"""End-to-end: the gate's raw checks in ``dataset_generation`` (``dag.test()``, the real Spark job).

One window holds a corruption of each class on its own day (integrity on 01-04, consistency on
01-05, history on 01-06): one run blocks them all in ``quality_gate`` with one quarantine entry
and nothing published; a second run accepts the days on purpose and the manifest says so.
Per-corruption coverage is in ``tests/unit/test_raw_checks.py`` and ``test_profiles.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pandas as pd
import pytest
import yaml
from dataset_helpers import load_dag, run_for_day, states, write_test_config

from mlpipeline.data import datasets
from mlpipeline.data.landing import partition_dir
from mlpipeline.lake import Lake
from mlpipeline.settings import PROJECT_ROOT

pytestmark = pytest.mark.spark

VERSION = dt.date(2013, 1, 6)  # window 01-04..01-06 (3-day test config)


@pytest.fixture
def lake(landed_lake, tmp_path, settings_env, airflow_db) -> Lake:
    """The landed test lake; history judged from 5 landed days (01-06 has 01-01..01-05)."""
    lake_root = tmp_path / "lake"
    shutil.copytree(landed_lake, lake_root)
    history = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())["quality"]
    config = write_test_config(tmp_path / "pipeline.yaml", history=history["history"] | {"min_days": 5})
    settings = settings_env(
        lake_uri=f"file://{lake_root}", pipeline_config=str(config), state_dir=str(tmp_path / "state")
    )
    return Lake.from_settings(settings)


def _mutate(lake: Lake, day: dt.date, change) -> None:
    directory = partition_dir("flights", day)
    lake.publish_frames(directory, {"part-0": change(lake.read_frame(directory))}, meta={"mutated": True})


def _unknown_destinations(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[::5], "dest"] = "ZZZ"  # codes the airports snapshot does not know
    return frame


def _time_hour_an_hour_late(frame: pd.DataFrame) -> pd.DataFrame:
    late = (frame["time_hour"] + pd.Timedelta(hours=1)).astype(frame["time_hour"].dtype)
    return frame.assign(time_hour=late)


def _asset_events() -> int:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetEvent))


def test_each_class_blocks_in_the_gate_then_an_operator_accepts_the_days(lake: Lake, capfd):
    _mutate(lake, dt.date(2013, 1, 4), _unknown_destinations)
    _mutate(lake, dt.date(2013, 1, 5), _time_hour_an_hour_late)
    _mutate(lake, VERSION, lambda f: f[f["carrier"] != "UA"])  # upstream lost a carrier
    dag = load_dag("dataset_generation")
    events = _asset_events()

    run = run_for_day(dag, VERSION)
    out, err = capfd.readouterr()
    assert run.state == "failed", states(run)
    assert states(run)["quality_gate"] == "failed", (states(run), (out + err)[-4000:])
    assert states(run)["publish"] != "success"
    for reason in (
        "[integrity raw/flights 2013-01-04] dest_in_airports",
        "[consistency raw/flights 2013-01-05] flights_time_hour_local",
        "[history raw/profile 2013-01-06] share[UA]_within_history on column 'flights.carrier'",
    ):
        assert reason in out + err, reason
    # Nothing published, no asset event (so no challenger), one quarantine entry with the report.
    assert not lake.is_committed(datasets.dataset_dir("flights_delay", VERSION))
    assert _asset_events() == events
    quarantine = datasets.quarantine_dir("flights_delay", VERSION)
    (entry,) = lake.list_dirs(quarantine)
    recorded = json.loads(lake.read_bytes(f"{quarantine}/{entry}/_SUCCESS"))
    assert "validation.json" in recorded["files"]
    report = json.loads(lake.read_bytes("reports/quality/flights_delay/2013-01-06/validation.json"))
    by_class = {
        c: {(f["expectation"], f["day"]) for f in fs} for c, fs in report["failures_by_class"].items()
    }
    assert by_class == {
        "integrity": {("dest_in_airports", "2013-01-04")},
        "consistency": {("flights_time_hour_local", "2013-01-05")},
        "history": {("share[UA]_within_history", "2013-01-06")},
    }
    summary = lake.read_bytes("reports/quality/flights_delay/2013-01-06/summary.md").decode()
    assert "## Failed: history (1)" in summary
    assert "On-call: Re-land the day" in summary

    # The operator checked upstream and accepts the three days on purpose.
    conf = {"accept_days": ["2013-01-04", "2013-01-05", "2013-01-06"], "override_reason": "TICKET-14 checked"}
    run = dag.test(logical_date=run.logical_date, run_conf=conf)
    assert run.state == "success", states(run)
    manifest = datasets.read_manifest(lake, "flights_delay", VERSION)
    override = manifest["quality"]["override"]
    assert override["accept_days"] == conf["accept_days"]
    assert override["reason"] == "TICKET-14 checked"
    assert override["accepted_failures"] == 3
    assert override["run"]["dag_id"] == "dataset_generation"
    assert _asset_events() == events + 1
