"""Dataset versions: content hashes, golden sampling and freezing, verified reads."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlpipeline.data import datasets
from mlpipeline.lake import Lake


def sample_frame(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "flight_key": [f"2013-01-{1 + i % 28:02d}_UA_{i}" for i in range(n)],
            "distance": pd.array([100.0 + i for i in range(n)], dtype="Float64"),
            "is_delayed": pd.array([i % 4 == 0 for i in range(n)], dtype="Int32"),
        }
    )


def test_content_hash_ignores_row_order_and_partitioning():
    frame = sample_frame()
    shuffled = frame.sample(frac=1.0, random_state=3)
    split_in_two = pd.concat([shuffled.iloc[:20], shuffled.iloc[20:]], ignore_index=True)
    assert datasets.frame_hash(frame) == datasets.frame_hash(split_in_two)
    changed = frame.copy()
    changed.loc[7, "distance"] = 999.0
    assert datasets.frame_hash(changed) != datasets.frame_hash(frame)
    retyped = frame.assign(distance=frame["distance"].astype("float32"))
    assert datasets.frame_hash(retyped) != datasets.frame_hash(frame)


def test_golden_sample_is_deterministic_and_seeded():
    frame = sample_frame(500)
    first = datasets.sample_golden(frame, 100, seed=42)
    again = datasets.sample_golden(frame.sample(frac=1.0, random_state=1), 100, seed=42)
    other = datasets.sample_golden(frame, 100, seed=7)
    assert len(first) == 100
    assert first["flight_key"].is_monotonic_increasing
    pd.testing.assert_frame_equal(first, again)
    assert set(first["flight_key"]) != set(other["flight_key"])


def _golden_manifest(frame: pd.DataFrame, version: str = "v1") -> dict:
    return datasets.build_manifest(
        name="g",
        kind="golden",
        version=version,
        window=(dt.date(2013, 12, 1), dt.date(2013, 12, 3)),
        frames={"golden": frame},
        job_stats={},
        quality={"success": True},
        params={},
        golden=None,
    )


def test_golden_is_frozen_and_verified(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}/lake")
    frame = sample_frame()
    datasets.publish_golden_frame(lake, frame, _golden_manifest(frame))
    with pytest.raises(datasets.DatasetError, match=r"already exists .* choose a new version name"):
        datasets.publish_golden_frame(lake, frame, _golden_manifest(frame))
    meta, back = datasets.load_golden(lake, "g", "v1")
    assert meta["content_hash"] == datasets.content_hash({"golden": datasets.frame_hash(back)})
    info = datasets.current_golden(lake, "g")
    assert info.overlaps(dt.date(2013, 11, 28), dt.date(2013, 12, 1))
    assert not info.overlaps(dt.date(2013, 11, 1), dt.date(2013, 11, 30))
    # Tampering with the published file is caught by the hash check.
    commit = lake.read_commit("golden/g/v1")
    path = next(p for p in commit.file_paths() if p.endswith("golden.parquet"))
    tampered = back.copy()
    tampered.loc[0, "is_delayed"] = 1 - int(tampered.loc[0, "is_delayed"])
    lake.write_bytes(path, tampered.to_parquet(index=False))
    with pytest.raises(datasets.DatasetError, match="does not match its manifest"):
        datasets.load_golden(lake, "g", "v1")


def test_unknown_dataset_version_is_named(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}/lake")
    with pytest.raises(
        datasets.DatasetError, match="dataset flights_delay version 2013-02-30 is not published"
    ):
        datasets.read_manifest(lake, "flights_delay", "2013-02-30")


def test_next_golden_version_is_one_past_the_highest(tmp_path):
    lake = Lake.from_uri(f"file://{tmp_path}/lake")
    assert datasets.next_golden_version(lake, "g") == "v1"
    for name in ("v1", "v3", "spring-2013", "v2b"):
        lake.write_bytes(f"golden/g/{name}/part.txt", b"x")  # any state: a half-written v3 counts too
    assert datasets.next_golden_version(lake, "g") == "v4"
