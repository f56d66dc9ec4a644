"""End-to-end: ``dataset_generation`` and ``golden_dataset`` with ``dag.test()`` on real data.

A 3-day window keeps each Spark run short; the Spark job is the real one, submitted by the
real ``SparkSubmitOperator`` to ``local[2]``.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from dataset_helpers import GOLDEN_DAYS, load_dag, run_for_day, states

from mlpipeline.data import datasets
from mlpipeline.data.landing import partition_dir
from mlpipeline.lake import Lake

pytestmark = pytest.mark.spark


def test_golden_then_two_versions_and_a_reproducible_rerun(env: Lake):
    golden = load_dag("golden_dataset")
    run = golden.test()
    assert run.state == "success", states(run)
    info = datasets.current_golden(env, "flights_delay_golden")
    assert info is not None
    assert (info.version, info.start, info.end) == ("v1", *GOLDEN_DAYS)
    meta, frame = datasets.load_golden(env, "flights_delay_golden", "v1")
    assert len(frame) == 1000
    assert meta["rows"] == {"golden": 1000}

    # The same version name is refused; the frozen set is untouched. (An empty version is the
    # next free name: the form's default never collides.)
    again = golden.test(run_conf={"version": "v1"})
    assert again.state == "failed"
    assert states(again)["check_version"] == "failed"
    assert datasets.load_golden(env, "flights_delay_golden", "v1")[0]["content_hash"] == meta["content_hash"]

    dag = load_dag("dataset_generation")
    for day in (dt.date(2013, 1, 4), dt.date(2013, 1, 5)):
        run = run_for_day(dag, day)
        assert run.state == "success", states(run)
    assert env.committed_partitions("datasets/flights_delay", key="ds") == ["2013-01-04", "2013-01-05"]
    manifest, frames = datasets.load_dataset(env, "flights_delay", "2013-01-04")
    assert manifest["window"] == {"start": "2013-01-02", "end": "2013-01-04", "days": 3}
    assert manifest["rows"]["train"] == len(frames["train"]) > 1000
    # Time-honest validation: the window's last day validates, the days before it train (a 3-day
    # window holds no recent days out: at most a third of it, rounded down, after one day).
    assert manifest["splits"]["kind"] == "time"
    assert manifest["splits"]["validation"] == {"start": "2013-01-04", "end": "2013-01-04", "days": 1}
    assert set(frames["validation"]["flight_date"].astype(str)) == {"2013-01-04"}
    assert set(frames) == {"train", "validation"}
    assert manifest["golden"]["version"] == "v1"
    assert manifest["golden"]["overlaps_window"] is False
    assert manifest["quality"]["success"] is True
    assert manifest["code_version"]["git_sha"]
    assert sorted(manifest["source_partitions"]) == ["airlines", "flights", "planes", "weather"]
    assert {c["name"] for c in manifest["columns"]} >= {"flight_key", "is_delayed"}
    assert env.exists("reports/quality/flights_delay/2013-01-04/summary.md")

    # Rerun: the same inputs give the same content and the same bytes.
    files_before = _file_bytes(env, "datasets/flights_delay/ds=2013-01-04")
    run = run_for_day(dag, dt.date(2013, 1, 4))
    assert run.state == "success", states(run)
    rerun = datasets.read_manifest(env, "flights_delay", "2013-01-04")
    assert rerun["content_hash"] == manifest["content_hash"]
    assert _file_bytes(env, "datasets/flights_delay/ds=2013-01-04") == files_before


def _file_bytes(lake: Lake, directory: str) -> dict[str, bytes]:
    commit = lake.read_commit(directory)
    return {
        name: lake.read_bytes(path)
        for name, path in zip(commit.files, commit.file_paths(), strict=True)
        if name.endswith(".parquet")
    }


# ---------------------------------------------------------------------------------------
# Bad input: each one blocked with a named reason, a quarantine entry, nothing published.
# The window of version 2013-01-06 is 01-04..01-06; the defect is put into day 01-06.
# ---------------------------------------------------------------------------------------
BAD_DAY = dt.date(2013, 1, 6)


def mutate(lake: Lake, table: str, day: dt.date, change) -> None:
    """Republish a raw partition with ``change`` applied to its rows (as a faulty upstream would)."""
    directory = partition_dir(table, day)
    frame = lake.read_frame(directory)
    lake.publish_frames(directory, {"part-0": change(frame)}, meta={"table": table, "mutated": True})


def drop_commit(lake: Lake, table: str, day: dt.date) -> None:
    lake.delete(f"{partition_dir(table, day)}/_SUCCESS")


def _negative_distance(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[::20], "distance"] = -frame.loc[frame.index[::20], "distance"]
    return frame


def _duplicated(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[::5]], ignore_index=True)  # +20% duplicated rows


BAD_INPUTS = {
    "missing partition": (
        lambda lake: drop_commit(lake, "weather", BAD_DAY),
        "wait_for_raw",
        "waiting for 1 raw partitions: raw/weather/dt=2013-01-06",
    ),
    "empty partition": (
        lambda lake: mutate(lake, "flights", BAD_DAY, lambda f: f.iloc[0:0]),
        "quality_gate",
        "[days] expect_column_values_to_be_between on column 'rows'",
    ),
    "missing column": (
        lambda lake: mutate(lake, "flights", BAD_DAY, lambda f: f.drop(columns=["distance"])),
        "prepare",
        "column 'distance' of raw/flights/dt=2013-01-06 is missing",
    ),
    "numbers as strings": (
        lambda lake: mutate(lake, "flights", BAD_DAY, lambda f: f.assign(distance=f["distance"].astype(str))),
        "prepare",
        "column 'distance' of raw/flights/dt=2013-01-06 has type string; expected double",
    ),
    "all labels null": (
        lambda lake: [
            mutate(
                lake, "flights", d, lambda f: f.assign(arr_delay=pd.array([None] * len(f), dtype="Float64"))
            )
            for d in (dt.date(2013, 1, 4), dt.date(2013, 1, 5), BAD_DAY)
        ],
        "quality_gate",
        "expect_table_row_count_to_be_between",
    ),
    "duplicated rows": (
        lambda lake: mutate(lake, "flights", BAD_DAY, _duplicated),
        "quality_gate",
        "[job] expect_column_values_to_be_between on column 'duplicate_share'",
    ),
    "out-of-range values": (
        lambda lake: (
            mutate(lake, "flights", BAD_DAY, _negative_distance),
            mutate(lake, "weather", BAD_DAY, lambda f: f.assign(temp=(f["temp"] - 32) * 5 / 9 + 273.15)),
        ),
        "quality_gate",
        "expect_column_values_to_be_between on column 'distance'",
    ),
    "weather stops covering an airport": (
        lambda lake: mutate(lake, "weather", BAD_DAY, lambda f: f[f["origin"] != "JFK"]),
        "quality_gate",
        "on column 'temp' where origin==\"JFK\"",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_blocked_with_its_reason(env: Lake, case: str, capfd):
    breaks, failing_task, reason = BAD_INPUTS[case]
    breaks(env)
    run = run_for_day(load_dag("dataset_generation"), BAD_DAY)
    out, err = capfd.readouterr()
    assert run.state == "failed", states(run)
    assert states(run)[failing_task] == "failed", states(run)
    assert states(run)["publish"] != "success"
    assert reason in out + err, f"reason {reason!r} not in the task log"
    # Nothing published, and the refusal is recorded with its reason.
    assert not env.is_committed(datasets.dataset_dir("flights_delay", BAD_DAY))
    entries = env.list_dirs(datasets.quarantine_dir("flights_delay", BAD_DAY))
    assert len(entries) == 1, entries
    recorded = json.loads(
        env.read_bytes(f"{datasets.quarantine_dir('flights_delay', BAD_DAY)}/{entries[0]}/_SUCCESS")
    )
    assert recorded["meta"]["reason"]
    if failing_task == "quality_gate":
        assert "validation.json" in recorded["files"]
        assert any(f.startswith("staged/train/") for f in recorded["files"])


def test_failed_rebuild_leaves_the_published_version_untouched(env: Lake):
    dag = load_dag("dataset_generation")
    assert run_for_day(dag, BAD_DAY).state == "success"
    before = datasets.read_manifest(env, "flights_delay", BAD_DAY)
    mutate(env, "weather", BAD_DAY, lambda f: f.assign(temp=f["temp"] + 273.15))
    run = run_for_day(dag, BAD_DAY)
    assert run.state == "failed"
    after, _ = datasets.load_dataset(env, "flights_delay", BAD_DAY)  # still whole: hash verified
    assert after["content_hash"] == before["content_hash"]
    assert after["created_at"] == before["created_at"]


def test_window_before_the_data_fails_at_once(env: Lake, capfd):
    run = run_for_day(load_dag("dataset_generation"), dt.date(2013, 1, 2))  # needs 2012-12-31
    out, err = capfd.readouterr()
    assert states(run)["wait_for_raw"] == "failed"
    assert "the first buildable version is 2013-01-03" in out + err
