"""The build_dataset Spark job, run for real as a subprocess on a few landed days.

Each Spark run costs ~15-25 s (JVM start), so the Spark runs are shared by module-scoped
fixtures: a clean run, its rerun (byte-identity), and one run on a doctored lake (duplicate,
out-of-range value, stale attempt, subsample, several output files). Bad-input checks stop
before the JVM starts and are fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.data import landing
from mlpipeline.lake import Lake

SCRIPT = Path(__file__).resolve().parents[2] / "include" / "mlpipeline" / "spark_jobs" / "build_dataset.py"
FIRST_DAY = dt.date(2013, 1, 1)
END_DAY = dt.date(2013, 1, 3)
WINDOW = 3
LEAKAGE = {"dep_delay", "dep_time", "arr_time", "air_time"}
EXPECTED_SCHEMA = {
    "flight_key": pa.string(),
    "flight_date": pa.date32(),
    "month": pa.int32(),
    "day_of_week": pa.int32(),
    "sched_dep_hour": pa.int32(),
    "sched_dep_minute": pa.int32(),
    "carrier": pa.string(),
    "airline_name": pa.string(),
    "origin": pa.string(),
    "dest": pa.string(),
    "distance": pa.float64(),
    "temp": pa.float64(),
    "dewp": pa.float64(),
    "humid": pa.float64(),
    "wind_dir": pa.float64(),
    "wind_speed": pa.float64(),
    "wind_gust": pa.float64(),
    "precip": pa.float64(),
    "pressure": pa.float64(),
    "visib": pa.float64(),
    "plane_age": pa.int32(),
    "plane_seats": pa.int32(),
    "plane_engines": pa.int32(),
    "plane_type": pa.string(),
    "plane_manufacturer": pa.string(),
    "is_delayed": pa.int32(),
    "arr_delay": pa.float64(),
}


def load_job_module():
    """The job script as a module (for its stdlib helpers; importing it does not start Spark)."""
    spec = importlib.util.spec_from_file_location("build_dataset_job", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(
    raw_root: Path, output: Path, *extra: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--raw-root",
        str(raw_root),
        "--end-date",
        END_DAY.isoformat(),
        "--window-days",
        str(WINDOW),
        "--output",
        str(output),
        "--master",
        "local[2]",
        *extra,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, **(env or {})}
    )


def bad_input_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("BAD INPUT: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def read_split(output: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(output / split)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def committed_file(raw_root: Path, table: str, day: dt.date) -> Path:
    directory = raw_root / table / f"dt={day.isoformat()}"
    marker = json.loads((directory / "_SUCCESS").read_text())
    return directory / "_attempts" / marker["attempt"] / marker["files"][0]


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory) -> Path:
    """A lake with 2013-01-01..03 landed; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("lake")
    landing.land_range(Lake.from_uri(f"file://{root}"), FIRST_DAY, END_DAY)
    return root


def copy_lake(base_lake: Path, dest: Path) -> Path:
    shutil.copytree(base_lake, dest)
    return dest / "raw"


@pytest.fixture(scope="module")
def clean_run(base_lake, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "staging"
    # Started as from a process that once made a Connect session (pyspark's mark, inherited):
    # with no SPARK_REMOTE the job is a classic one all the same.
    proc = run_job(base_lake / "raw", output, env={"SPARK_CONNECT_MODE_ENABLED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return output


@pytest.fixture(scope="module")
def doctored_run(base_lake, tmp_path_factory, spark_connect_server):
    """A lake with a duplicated flight, a negative distance and a stale attempt holding junk
    (built on the session's Spark Connect server, as the embedded stack runs the job)."""
    raw = copy_lake(base_lake, tmp_path_factory.mktemp("doctored") / "lake")
    lake = Lake.from_uri(f"file://{raw.parent}")
    day = dt.date(2013, 1, 2)
    flights = pd.read_parquet(committed_file(raw, "flights", day))
    labelled = flights.index[flights["arr_delay"].notna()]
    duplicate = flights.loc[[labelled[0]]].copy()
    duplicate["dep_delay"] = duplicate["dep_delay"] + 1  # same flight key, differs elsewhere
    flights.loc[labelled[1:11], "distance"] = -100.0
    doctored = pd.concat([flights, duplicate], ignore_index=True)
    lake.publish_frames(landing.partition_dir("flights", day), {"part-0": doctored})
    stale = raw / "flights" / f"dt={day.isoformat()}" / "_attempts" / "00000000T000000-stale"
    stale.mkdir(parents=True)
    junk = flights.head(50).assign(distance=lambda df: df["distance"].astype(str))
    junk.to_parquet(stale / "part-0.parquet", index=False)
    output = tmp_path_factory.mktemp("out_doctored") / "staging"
    proc = run_job(
        raw,
        output,
        *("--subsample-fraction", "0.5", "--output-partitions", "2", "--seed", "42"),
        env={"SPARK_REMOTE": spark_connect_server},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        "output": output,
        "duplicate_key": duplicate.iloc[0],
        "negative_keys": {flight_key(row) for _, row in flights.loc[labelled[1:11]].iterrows()},
        "input_rows": sum(
            len(pd.read_parquet(committed_file(raw, "flights", FIRST_DAY + dt.timedelta(days=i))))
            for i in range(WINDOW)
        ),
    }


def flight_key(row: pd.Series) -> str:
    return (
        f"{row['year']:04d}-{row['month']:02d}-{row['day']:02d}_{row['carrier']}_{row['flight']}_"
        f"{row['origin']}_{row['sched_dep_time']:04d}"
    )


# ------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_clean_run_output_contract(clean_run, base_lake):
    stats = json.loads((clean_run / "job_stats.json").read_text())
    files = sorted(str(p.relative_to(clean_run)) for p in clean_run.rglob("*") if p.is_file())
    assert files == ["job_stats.json", "train/part-00000.parquet", "validation/part-00000.parquet"]

    frames = {split: read_split(clean_run, split) for split in ("train", "validation")}
    for split, frame in frames.items():
        schema = pq.read_schema(clean_run / split / "part-00000.parquet")
        assert {f.name: f.type for f in schema} == EXPECTED_SCHEMA, split
        assert list(frame["flight_key"]) == sorted(frame["flight_key"]), "rows sorted by flight_key"
        assert set(frame["is_delayed"].unique()) <= {0, 1}
        assert frame["arr_delay"].notna().all(), "cancelled/diverted flights must be dropped"
        assert ((frame["arr_delay"] > 15).astype(int) == frame["is_delayed"]).all()
        assert not LEAKAGE & set(frame.columns)
        for column in ("carrier", "origin", "dest", "plane_type", "plane_manufacturer", "airline_name"):
            assert frame[column].notna().all(), column
        assert frame["flight_date"].between(FIRST_DAY, END_DAY).all()
        assert frame["day_of_week"].between(1, 7).all()
    both = pd.concat(frames.values(), ignore_index=True)
    assert both["flight_key"].is_unique
    assert both["flight_key"].notna().all()
    assert both.loc[both["flight_date"] == FIRST_DAY, "day_of_week"].unique().tolist() == [2]  # a Tuesday
    assert (both["plane_type"] == "UNKNOWN").any(), "flights with unknown planes are kept, filled UNKNOWN"
    assert both["plane_age"].isna().any(), "numeric nulls stay null"
    assert both["wind_gust"].isna().any(), "numeric nulls stay null"

    # Against the raw data: every labelled flight of the window is there, once.
    raw = pd.concat(
        pd.read_parquet(committed_file(base_lake / "raw", "flights", FIRST_DAY + dt.timedelta(days=i)))
        for i in range(WINDOW)
    )
    labelled = raw[raw["arr_delay"].notna()]
    assert set(both["flight_key"]) == {flight_key(r) for _, r in labelled.iterrows()}
    assert stats["input_rows"] == len(raw)
    assert stats["cancelled_dropped"] == len(raw) - len(labelled) > 0
    assert stats["duplicates_dropped"] == 0
    assert stats["filtered_rows"] == stats["input_rows"] - stats["output_rows"]
    assert stats["rows"] == {split: len(frame) for split, frame in frames.items()}
    for split, frame in frames.items():
        assert stats["label_rate"][split] == pytest.approx(frame["is_delayed"].mean(), abs=1e-6)
    assert stats["window"] == {"start": "2013-01-01", "end": "2013-01-03", "days": 3}
    assert stats["spark_version"].startswith("4.")
    assert stats["label_column"] == "is_delayed"
    assert not LEAKAGE & set(stats["feature_columns"])
    assert "arr_delay" not in stats["feature_columns"]
    assert set(stats["input_files"]) == {"flights", "weather", "planes", "airlines"}
    assert list(stats["input_files"]["planes"]) == ["2013-01-03"], "dimensions: end-date snapshot only"

    # Deterministic split, close to the validation fraction.
    fraction = stats["rows"]["validation"] / stats["output_rows"]
    assert 0.16 < fraction < 0.24


@pytest.mark.spark
def test_rerun_is_byte_identical(clean_run, base_lake, tmp_path, spark_connect_server):
    """Rerun on a Spark Connect server (the embedded stack's way; the clean run is a classic
    spark-submit one, the cluster's way): the same bytes."""
    output = tmp_path / "again"
    proc = run_job(base_lake / "raw", output, env={"SPARK_REMOTE": spark_connect_server})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert tree_digest(output) == tree_digest(clean_run)


@pytest.mark.spark
def test_a_split_without_rows_is_an_empty_file_with_the_schema(
    clean_run, base_lake, tmp_path, spark_connect_server
):
    """A validation share so small that no flight hashes into it: the split is still written,
    one Parquet file with the output schema and no rows; the rest is the whole clean output."""
    output = tmp_path / "no_validation"
    proc = run_job(
        base_lake / "raw",
        output,
        "--validation-fraction",
        "0.0001",
        env={"SPARK_REMOTE": spark_connect_server},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (output / "validation").iterdir()) == ["part-00000.parquet"]
    empty = pq.read_table(output / "validation" / "part-00000.parquet")
    assert empty.num_rows == 0
    assert empty.schema.names == pq.read_table(clean_run / "train").schema.names
    stats = json.loads((output / "job_stats.json").read_text())
    assert stats["rows"]["validation"] == 0
    assert stats["rows"]["train"] == len(read_split(clean_run, "train")) + len(
        read_split(clean_run, "validation")
    )


@pytest.mark.spark
def test_time_split_and_holdout_put_each_day_in_one_split(
    clean_run, base_lake, tmp_path, spark_connect_server
):
    """Four days, ``--validation-split time --holdout-days 1``: 01-01..02 train, 01-03 validation,
    01-04 recent; the same flights as the key-hash run, each in the split of its day."""
    raw = copy_lake(base_lake, tmp_path / "lake")
    fourth = END_DAY + dt.timedelta(days=1)
    landing.land_range(Lake.from_uri(f"file://{raw.parent}"), fourth, fourth)
    output = tmp_path / "staging"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--raw-root", str(raw), "--end-date", fourth.isoformat(),
         "--window-days", "4", "--output", str(output),
         "--validation-split", "time", "--validation-days", "5", "--holdout-days", "1"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SPARK_REMOTE": spark_connect_server},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    days = {
        s: sorted(set(read_split(output, s)["flight_date"].astype(str)))
        for s in ("train", "validation", "recent")
    }
    assert days == {
        "train": ["2013-01-01", "2013-01-02"],
        "validation": ["2013-01-03"],
        "recent": ["2013-01-04"],
    }
    stats = json.loads((output / "job_stats.json").read_text())
    assert stats["split"]["kind"] == "time"
    assert stats["split"]["recent"] == {"start": "2013-01-04", "end": "2013-01-04", "days": 1}
    assert set(stats["rows"]) == {"train", "validation", "recent"}
    first_three = pd.concat([read_split(output, s) for s in ("train", "validation")])["flight_key"]
    hashed = pd.concat([read_split(clean_run, s) for s in ("train", "validation")])["flight_key"]
    assert sorted(first_three) == sorted(hashed)  # same flights as the key-hash run, split by day


@pytest.mark.spark
def test_doctored_lake(doctored_run, clean_run):
    output = doctored_run["output"]
    stats = json.loads((output / "job_stats.json").read_text())
    assert sorted(p.name for p in (output / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    for path in (output / "train").iterdir():
        keys = pd.read_parquet(path)["flight_key"].tolist()
        assert keys == sorted(keys)
    frames = {split: read_split(output, split) for split in ("train", "validation")}
    both = pd.concat(frames.values(), ignore_index=True)

    # Only the committed attempt is read (the stale one has string distances and would fail).
    assert stats["input_rows"] == doctored_run["input_rows"]
    assert stats["duplicates_dropped"] == 1
    assert both["flight_key"].is_unique
    assert stats["filtered_rows"] == stats["cancelled_dropped"] + 1 + stats["subsample_dropped"]

    # Subsample: about half, by key hash, and a key keeps its split whatever else is in the run.
    clean = {s: set(read_split(clean_run, s)["flight_key"]) for s in ("train", "validation")}
    assert 0.4 < stats["output_rows"] / (stats["output_rows"] + stats["subsample_dropped"]) < 0.6
    for split, frame in frames.items():
        assert set(frame["flight_key"]) <= clean[split], split

    # Out-of-range values are not filtered: they reach the quality gate.
    kept_negative = both.loc[both["flight_key"].isin(doctored_run["negative_keys"])]
    assert len(kept_negative) >= 1, "seed 42 keeps some of the 10 doctored flights"
    assert (kept_negative["distance"] == -100.0).all()
    assert (both.loc[~both["flight_key"].isin(doctored_run["negative_keys"]), "distance"] > 0).all()
    assert flight_key(doctored_run["duplicate_key"]) in clean["train"] | clean["validation"]


def test_missing_partitions_are_all_named(base_lake, tmp_path):
    raw = copy_lake(base_lake, tmp_path / "lake")
    (raw / "flights" / "dt=2013-01-02" / "_SUCCESS").unlink()  # data there, but not committed
    shutil.rmtree(raw / "weather" / "dt=2013-01-03")
    shutil.rmtree(raw / "planes" / "dt=2013-01-03")
    shutil.rmtree(raw / "airlines" / "dt=2013-01-01")  # outside what the job reads: not required
    proc = run_job(raw, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    line = bad_input_line(proc)
    for partition in ("raw/flights/dt=2013-01-02", "raw/weather/dt=2013-01-03", "raw/planes/dt=2013-01-03"):
        assert partition in line
    assert "airlines" not in line
    assert not (tmp_path / "out" / "job_stats.json").exists()


def test_wrong_type_and_missing_column_are_named(base_lake, tmp_path):
    raw = copy_lake(base_lake, tmp_path / "lake")
    flights_file = committed_file(raw, "flights", dt.date(2013, 1, 2))
    flights = pd.read_parquet(flights_file)
    flights.assign(distance=flights["distance"].astype(str)).to_parquet(flights_file, index=False)
    weather_file = committed_file(raw, "weather", dt.date(2013, 1, 3))
    pd.read_parquet(weather_file).drop(columns=["temp"]).to_parquet(weather_file, index=False)
    proc = run_job(raw, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    line = bad_input_line(proc)
    assert "column 'distance' of raw/flights/dt=2013-01-02 has type string; expected double" in line
    assert "column 'temp' of raw/weather/dt=2013-01-03 is missing" in line


def test_malformed_marker_is_bad_input(base_lake, tmp_path):
    raw = copy_lake(base_lake, tmp_path / "lake")
    marker = raw / "weather" / "dt=2013-01-01" / "_SUCCESS"
    marker.write_text(json.dumps({"attempt": "nope", "files": ["part-0.parquet"]}))
    proc = run_job(raw, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "raw/weather/dt=2013-01-01/_SUCCESS names _attempts/nope/part-0.parquet" in bad_input_line(proc)


def test_footer_reader_types(tmp_path):
    job = load_job_module()
    table = pa.table(
        {
            "i8": pa.array([1], pa.int8()),
            "i16": pa.array([1], pa.int16()),
            "i32": pa.array([1], pa.int32()),
            "i64": pa.array([1], pa.int64()),
            "u8": pa.array([1], pa.uint8()),
            "f32": pa.array([1.0], pa.float32()),
            "f64": pa.array([1.0]),
            "s": pa.array(["x"]),
            "ls": pa.array(["x"], pa.large_string()),
            "dict": pa.array(["x"]).dictionary_encode(),
            "bin": pa.array([b"x"]),
            "ts": pa.array([dt.datetime(2013, 1, 1)], pa.timestamp("us", "UTC")),
            "ts_ntz": pa.array([dt.datetime(2013, 1, 1)], pa.timestamp("us")),
            "ts_ns": pa.array([dt.datetime(2013, 1, 1)], pa.timestamp("ns", "UTC")),
            "d": pa.array([dt.date(2013, 1, 1)]),
            "lst": pa.array([[1, 2]]),
            "st": pa.array([{"a": [1]}]),
            "b": pa.array([True]),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert job.parquet_footer.parquet_columns(str(path)) == {
        "i8": "tinyint",
        "i16": "smallint",
        "i32": "int",
        "i64": "bigint",
        "u8": "tinyint unsigned",
        "f32": "float",
        "f64": "double",
        "s": "string",
        "ls": "string",
        "dict": "string",
        "bin": "binary",
        "ts": "timestamp",
        "ts_ntz": "timestamp_ntz",
        "ts_ns": "timestamp(nanos)",
        "d": "date",
        "lst": "nested",
        "st": "nested",
        "b": "boolean",
    }
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="PAR1"):
        job.parquet_footer.parquet_columns(str(path))


@pytest.mark.spark
def test_canonicalize_footer_sorts_encodings(clean_run, tmp_path):
    """Shuffled encoding lists (as parquet-mr's HashSet produces) are put back in one order."""
    job = load_job_module()
    original = clean_run / "train" / "part-00000.parquet"
    shuffled = tmp_path / "shuffled.parquet"
    data = bytearray(original.read_bytes())
    footer, offset = job.parquet_footer._read_footer(str(original))
    metadata = job.parquet_footer._Compact(footer).read_struct()
    changed = 0
    for row_group in metadata[4]:
        for chunk in row_group[1]:
            start, end = chunk[3][2].span
            if end - start > 1:
                data[offset + start : offset + end] = data[offset + start : offset + end][::-1]
                changed += 1
    assert changed
    shuffled.write_bytes(bytes(data))
    assert shuffled.read_bytes() != original.read_bytes()
    assert job.parquet_footer.canonicalize_footer(str(shuffled)) is True
    assert shuffled.read_bytes() == original.read_bytes()
    assert job.parquet_footer.canonicalize_footer(str(shuffled)) is False
    assert pd.read_parquet(shuffled).equals(pd.read_parquet(original))


@pytest.mark.spark
def test_flight_key_digits_are_format_string_s(spark_connect_server, monkeypatch):
    """The flight key's zero-padded numbers (plain string functions: the formatter cost ~1 us a
    row) give format_string's text for any value: signs, widths exceeded, the long extremes."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    job = load_job_module()
    values = [0, 7, 10, 99, 100, 2359, 9999, 10000, 123456, -1, -7, -99, -100, -12345]
    values += [2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
    # pyspark marks this process as a Connect one (an env var its children inherit): undone after.
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
    spark = SparkSession.builder.remote(spark_connect_server).getOrCreate()
    try:
        frame = spark.createDataFrame([(v,) for v in values], "x long")
        for width in (2, 4):
            got = frame.select(
                F.format_string(f"%0{width}d", "x").alias("expected"),
                job.zero_padded(F.col("x"), width).alias("got"),
            ).collect()
            assert [r.got for r in got] == [r.expected for r in got], width
    finally:
        spark.stop()


def test_observed_counts_that_disagree_with_the_files_fail_the_job(tmp_path):
    """A stage Spark ran twice would double its observed counts: the footers are the truth."""
    job = load_job_module()
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"x": list(range(7))}), tmp_path / "train" / "part-00000.parquet")
    pq.write_table(pa.table({"x": list(range(5))}), tmp_path / "in.parquet")
    inputs = {"flights": {"2013-01-01": [str(tmp_path / "in.parquet")]}}
    counts = {"flights": {"input_rows": 5}, "kept": {"kept_rows": 7}, "rows": {"train": 7}}
    job.check_counts(counts, inputs)  # agrees
    assert job.parquet_footer.parquet_num_rows(str(tmp_path / "train" / "part-00000.parquet")) == 7
    with pytest.raises(
        RuntimeError, match=r"flights read: observed 10, footers 5; rows written: observed 14"
    ):
        job.check_counts(counts | {"flights": {"input_rows": 10}, "kept": {"kept_rows": 14}}, inputs)


def test_shuffle_and_output_partitions_are_sized_to_the_input(tmp_path):
    job = load_job_module()

    def inputs_of(*sizes: int) -> dict:
        paths = []
        for size in sizes:
            path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
            path.write_bytes(b"\0" * size)
            paths.append(str(path))
        return {"flights": {"2013-01-01": paths}}

    mib = 1024 * 1024
    small, x10 = inputs_of(2 * mib), inputs_of(30 * mib, 20 * mib)  # a 28-day window; the year x10
    assert (job.shuffle_partitions_for(small), job.output_partitions_for(small)) == (1, 1)
    assert (job.shuffle_partitions_for(x10), job.output_partitions_for(x10)) == (7, 2)
    args = job.parse_args(
        ["--raw-root", "r", "--end-date", "2013-01-28", "--window-days", "28", "--output", "o"]
    )
    assert (args.shuffle_partitions, args.output_partitions) == (0, 0)  # 0: sized when the job runs
