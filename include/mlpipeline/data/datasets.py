"""Versioned datasets in the lake: manifests, content hashes, atomic publish, quarantine, golden sets.

Layout (see :mod:`mlpipeline.lake` for the commit protocol)::

    datasets/<name>/ds=YYYY-MM-DD/   train/*.parquet, validation/*.parquet, manifest.json + _SUCCESS
    golden/<name>/<version>/         golden.parquet, manifest.json + _SUCCESS (never overwritten)
    quarantine/<name>/ds=…/<attempt>/ staged data (if any), validation.json, summary.md, reason.json

The ``_SUCCESS`` marker carries the manifest as its ``meta``, so a reader gets the manifest
and the committed file list in one atomic read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline import locations
from mlpipeline.lake import Commit, Lake, LakeError
from mlpipeline.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "validation", "recent")
OPTIONAL_SPLITS = ("recent",)  # written when the window holds days out (dataset.holdout_days)
KEY = "flight_key"
LABEL = "is_delayed"
JOB_SCRIPT = PROJECT_ROOT / "include" / "mlpipeline" / "spark_jobs" / "build_dataset.py"
#: Modules the job imports besides the standard library and pyspark (``spark-submit --py-files``).
JOB_PY_FILES = (JOB_SCRIPT.parent / "parquet_footer.py",)


class DatasetError(RuntimeError):
    """A dataset is missing, uncommitted, refused or does not match its manifest."""


dataset_dir = locations.dataset_dir
golden_dir = locations.golden_dir
quarantine_dir = locations.quarantine_dir


def window_for(day: dt.date, window_days: int) -> tuple[dt.date, dt.date]:
    """The trailing window ``[day - window_days + 1, day]``."""
    return day - dt.timedelta(days=window_days - 1), day


# --------------------------------------------------------------------------------------
# Content hash and code version
# --------------------------------------------------------------------------------------
def frame_hash(frame: pd.DataFrame) -> str:
    """Hash of a table's content: independent of file names, partitioning and row order.

    Column types enter as Arrow types, so the pandas dtype backend a reader chose does not
    change the hash; values enter through pandas' stable row hashes.
    """
    import pandas as pd
    import pyarrow as pa

    ordered = frame.sort_values(KEY, kind="mergesort").reset_index(drop=True)
    schema = pa.Schema.from_pandas(ordered, preserve_index=False)
    digest = hashlib.sha256()
    digest.update(json.dumps([(f.name, str(f.type)) for f in schema]).encode())
    digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def content_hash(split_hashes: dict[str, str]) -> str:
    """One hash over the per-split hashes."""
    payload = json.dumps(sorted(split_hashes.items())).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def code_version() -> dict[str, str]:
    """Git commit of the repository (if known) and the hash of the Spark job script."""
    sha = os.environ.get("MLPIPELINE_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
    return {"git_sha": sha, "job_sha256": hashlib.sha256(JOB_SCRIPT.read_bytes()).hexdigest()}


# --------------------------------------------------------------------------------------
# Reading staged output
# --------------------------------------------------------------------------------------
def staged_splits(staging_dir: Path) -> dict[str, pd.DataFrame]:
    import pandas as pd

    frames = {}
    for split in SPLITS:
        files = sorted((staging_dir / split).glob("*.parquet"))
        if not files and split in OPTIONAL_SPLITS:
            continue
        if not files:
            raise DatasetError(f"staged dataset {staging_dir} has no {split} files")
        parts = [pd.read_parquet(f, dtype_backend="numpy_nullable") for f in files]
        frames[split] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frames


# --------------------------------------------------------------------------------------
# Golden sets
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenInfo:
    name: str
    version: str
    start: dt.date
    end: dt.date
    content_hash: str

    def overlaps(self, start: dt.date, end: dt.date) -> bool:
        return start <= self.end and self.start <= end

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "content_hash": self.content_hash,
        }


def golden_versions(lake: Lake, name: str) -> list[GoldenInfo]:
    """Every committed golden version of ``name``, oldest commit first."""
    found = []
    for version in lake.list_dirs(locations.golden_root(name)):
        directory = golden_dir(name, version)
        if lake.is_committed(directory):
            commit = lake.read_commit(directory)
            meta = commit.meta
            found.append(
                (
                    commit.committed_at,
                    GoldenInfo(
                        name,
                        version,
                        dt.date.fromisoformat(meta["window"]["start"]),
                        dt.date.fromisoformat(meta["window"]["end"]),
                        meta["content_hash"],
                    ),
                )
            )
    return [info for _, info in sorted(found, key=lambda item: item[0])]


def current_golden(lake: Lake, name: str) -> GoldenInfo | None:
    """The newest committed golden version (the one training and evaluation use)."""
    versions = golden_versions(lake, name)
    return versions[-1] if versions else None


def next_golden_version(lake: Lake, name: str) -> str:
    """The next free version name ``v<N+1>``, N the highest ``v<number>`` in the lake (any state)."""
    numbers = [
        int(v[1:]) for v in lake.list_dirs(locations.golden_root(name)) if v[:1] == "v" and v[1:].isdigit()
    ]
    return f"v{max(numbers, default=0) + 1}"


def sample_golden(frame: pd.DataFrame, sample_size: int, seed: int) -> pd.DataFrame:
    """A deterministic sample: the rows with the smallest seeded hash of their key, sorted by key."""
    import pandas as pd

    if len(frame) <= sample_size:
        return frame.sort_values(KEY, kind="mergesort").reset_index(drop=True)
    keys = frame[KEY].astype(str)
    salted = pd.util.hash_pandas_object(keys + f"#{seed}", index=False)
    chosen = frame.loc[salted.sort_values(kind="mergesort").index[:sample_size]]
    return chosen.sort_values(KEY, kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Manifests and publishing
# --------------------------------------------------------------------------------------
def build_manifest(
    *,
    name: str,
    kind: str,
    version: str,
    window: tuple[dt.date, dt.date],
    frames: dict[str, pd.DataFrame],
    job_stats: dict[str, Any],
    quality: dict[str, Any],
    params: dict[str, Any],
    golden: GoldenInfo | None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a dataset version: what it is, where it came from, how to check it."""
    split_hashes = {split: frame_hash(frame) for split, frame in frames.items()}
    first = next(iter(frames.values()))
    sources = {
        table: [{"dt": day, "files": files} for day, files in sorted(by_day.items())]
        for table, by_day in job_stats.get("input_files", {}).items()
    }
    manifest = {
        "name": name,
        "kind": kind,
        "version": version,
        "window": {
            "start": window[0].isoformat(),
            "end": window[1].isoformat(),
            "days": (window[1] - window[0]).days + 1,
        },
        "rows": {split: len(frame) for split, frame in frames.items()},
        "label_rate": {split: round(float(frame[LABEL].mean()), 6) for split, frame in frames.items()},
        "schema": [{"name": c, "dtype": str(first[c].dtype)} for c in first.columns],
        "columns": job_stats.get("columns", []),
        "feature_columns": job_stats.get("feature_columns", []),
        "categorical_features": job_stats.get("categorical_features", []),
        "label": LABEL,
        "key": KEY,
        "split_hashes": split_hashes,
        "splits": job_stats.get("split"),  # the days of each split (build_dataset.split_plan)
        "content_hash": content_hash(split_hashes),
        "source_partitions": sources,
        "cleaning": {
            k: job_stats.get(k)
            for k in (
                "input_rows",
                "cancelled_dropped",
                "duplicates_dropped",
                "subsample_dropped",
                "rows_without_weather",
                "rows_without_plane",
            )
        },
        "params": params,
        "spark_version": job_stats.get("spark_version"),
        "code_version": code_version(),
        "quality": quality,
        "golden": None,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "run": run or {},
    }
    if golden is not None:
        manifest["golden"] = golden.as_dict() | {"overlaps_window": golden.overlaps(*window)}
    return manifest


def trained_end(manifest: dict[str, Any]) -> str:
    """The last day a model trained on this version saw (train or validation): the window's end
    unless the version held its newest days out as ``recent``."""
    splits = manifest.get("splits") or {}
    return (splits.get("validation") or {}).get("end") or manifest["window"]["end"]


def validation_split_label(manifest: dict[str, Any]) -> str:
    """``time 2013-01-17..2013-01-21`` or ``key_hash 0.2`` (versions before splits were recorded:
    ``key_hash``)."""
    splits = manifest.get("splits") or {}
    if splits.get("kind") == "time":
        return f"time {splits['validation']['start']}..{splits['validation']['end']}"
    fraction = splits.get("validation_fraction", (manifest.get("params") or {}).get("validation_fraction"))
    return f"key_hash {fraction}" if fraction is not None else "key_hash"


def publish_dataset(lake: Lake, staging_dir: Path, manifest: dict[str, Any]) -> Commit:
    """Publish a validated staged dataset as ``datasets/<name>/ds=<version>`` (replaces a rerun)."""
    directory = dataset_dir(manifest["name"], manifest["version"])
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        bundle = Path(tmp)
        for split in SPLITS:
            if (staging_dir / split).is_dir() or split not in OPTIONAL_SPLITS:
                shutil.copytree(staging_dir / split, bundle / split)
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        return lake.publish_local_dir(directory, str(bundle), meta=manifest)


def publish_golden_frame(lake: Lake, frame: pd.DataFrame, manifest: dict[str, Any]) -> Commit:
    """Publish a golden set; refuses to overwrite an existing version."""
    from mlpipeline.lake import frame_to_parquet

    directory = golden_dir(manifest["name"], manifest["version"])
    if lake.is_committed(directory):
        raise DatasetError(
            f"golden version {manifest['name']}/{manifest['version']} already exists at "
            f"{lake.uri(directory)}; golden sets are frozen: choose a new version name"
        )
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    return lake.publish(
        directory, {"golden.parquet": frame_to_parquet(frame), "manifest.json": body}, manifest
    )


def quarantine(
    lake: Lake,
    name: str,
    day: dt.date | str,
    reason: str,
    staging_dir: Path | None = None,
    report_json: str | None = None,
    report_markdown: str | None = None,
) -> str:
    """Keep a refused dataset with the reason and the validation result; return its lake path."""
    attempt = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    directory = posixpath.join(quarantine_dir(name, day), attempt)
    with tempfile.TemporaryDirectory(prefix="quarantine-") as tmp:
        bundle = Path(tmp)
        if staging_dir is not None and staging_dir.is_dir():
            shutil.copytree(staging_dir, bundle / "staged")
        (bundle / "reason.json").write_text(
            json.dumps({"reason": reason, "quarantined_at": attempt}, indent=2)
        )
        if report_json:
            (bundle / "validation.json").write_text(report_json)
        (bundle / "summary.md").write_text(report_markdown or f"# Quarantined {name} ds={day}\n\n{reason}\n")
        lake.publish_local_dir(directory, str(bundle), meta={"reason": reason})
    if staging_dir is not None:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return directory


# --------------------------------------------------------------------------------------
# Reading published datasets
# --------------------------------------------------------------------------------------
def read_manifest(lake: Lake, name: str, day: dt.date | str) -> dict[str, Any]:
    """The manifest of a published version; :class:`DatasetError` if it was never published."""
    directory = dataset_dir(name, day)
    try:
        return lake.read_commit(directory).meta
    except LakeError:
        raise DatasetError(
            f"dataset {name} version {day} is not published ({lake.uri(directory)} has no _SUCCESS)"
        ) from None


def load_dataset(lake: Lake, name: str, day: dt.date | str, verify: bool = True) -> tuple[dict, dict]:
    """``(manifest, {split: frame})`` of a published version, checked against its content hash."""
    import io

    import pandas as pd

    directory = dataset_dir(name, day)
    manifest = read_manifest(lake, name, day)
    commit = lake.read_commit(directory)
    frames = {}
    for split in SPLITS:
        paths = [p for p in commit.file_paths() if f"/{split}/" in p and p.endswith(".parquet")]
        if not paths and split in OPTIONAL_SPLITS:
            continue
        if not paths:
            raise DatasetError(f"dataset {name} version {day} has no {split} files")
        parts = [
            pd.read_parquet(io.BytesIO(lake.read_bytes(p)), dtype_backend="numpy_nullable") for p in paths
        ]
        frames[split] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if verify:
        hashes = {split: frame_hash(frame) for split, frame in frames.items()}
        if content_hash(hashes) != manifest["content_hash"]:
            raise DatasetError(
                f"dataset {name} version {day} does not match its manifest: content hash "
                f"{content_hash(hashes)} != {manifest['content_hash']} (files changed after publishing?)"
            )
    return manifest, frames


def load_golden(lake: Lake, name: str, version: str, verify: bool = True) -> tuple[dict, pd.DataFrame]:
    """``(manifest, frame)`` of a golden version, checked against its content hash."""
    import io

    import pandas as pd

    directory = golden_dir(name, version)
    try:
        commit = lake.read_commit(directory)
    except LakeError:
        raise DatasetError(f"golden set {name}/{version} does not exist ({lake.uri(directory)})") from None
    path = next(p for p in commit.file_paths() if p.endswith("golden.parquet"))
    frame = pd.read_parquet(io.BytesIO(lake.read_bytes(path)), dtype_backend="numpy_nullable")
    if verify:
        actual = content_hash({"golden": frame_hash(frame)})
        if actual != commit.meta["content_hash"]:
            raise DatasetError(
                f"golden set {name}/{version} does not match its manifest: content hash {actual} != "
                f"{commit.meta['content_hash']}"
            )
    return commit.meta, frame
