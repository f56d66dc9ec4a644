"""Dataset generation steps, one function per DAG task (``dataset_generation``, ``golden_dataset``).

Raw window landed? → prepare (stage inputs, check markers and schemas before any JVM starts)
→ Spark job (``spark_jobs/build_dataset.py``, submitted by ``SparkSubmitOperator``) → quality
gate (GX) → publish (atomic) or quarantine (with the reason). Every step is idempotent: the
staging directory is per dataset version, a rerun rebuilds it and republishing replaces the
version as a whole.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.data import datasets
from mlpipeline.data.landing import iter_days
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config
from mlpipeline.settings import Settings, get_settings
from mlpipeline.spark_jobs import build_dataset as job

#: Raw tables the job reads every day of its window, and once (at the window's end); the gate
#: also needs the airports snapshot (origin/dest integrity, each airport's time zone).
DAILY_TABLES = job.DAILY_TABLES
DIMENSION_TABLES = (*job.DIMENSION_TABLES, "airports")


class BadInputError(datasets.DatasetError):
    """The raw input cannot make a dataset (missing column, wrong type, unreadable file)."""


class QualityGateError(datasets.DatasetError):
    """The staged dataset failed the quality gate; it was quarantined, nothing was published."""


class WindowError(datasets.DatasetError, ValueError):
    """The requested window can never be built (it starts before the first day of data)."""


@dataclass(frozen=True)
class BuildPlan:
    """Everything the Spark job and the later steps need, passed between tasks as a dict."""

    kind: str  # "training" | "golden"
    name: str
    version: str
    start: dt.date
    end: dt.date
    raw_root: str
    staging_dir: str
    seed: int
    validation_fraction: float
    subsample_fraction: float
    validation_split: str = "key_hash"
    validation_days: int = 5
    holdout_days: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BuildPlan:
        return cls(
            **{**raw, "start": dt.date.fromisoformat(raw["start"]), "end": dt.date.fromisoformat(raw["end"])}
        )

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def job_args(self) -> list[str]:
        """Arguments of ``build_dataset.py`` (settings are passed, the job imports nothing)."""
        return [
            "--raw-root", self.raw_root,
            "--end-date", self.end.isoformat(),
            "--window-days", str(self.days),
            "--output", self.staging_dir,
            "--validation-fraction", str(self.validation_fraction),
            "--validation-split", self.validation_split,
            "--validation-days", str(self.validation_days),
            "--holdout-days", str(self.holdout_days),
            "--subsample-fraction", str(self.subsample_fraction),
            "--seed", str(self.seed),
        ]  # fmt: skip


def required_partitions(start: dt.date, end: dt.date) -> list[str]:
    """Raw partitions a window needs: daily tables every day, dimensions at the end day."""
    needed = [locations.raw_partition(t, d) for t in DAILY_TABLES for d in iter_days(start, end)]
    return needed + [locations.raw_partition(t, end) for t in DIMENSION_TABLES]


def training_window(day: dt.date, cfg: PipelineConfig, settings: Settings) -> tuple[dt.date, dt.date]:
    """The window of dataset version ``day``; :class:`WindowError` if it predates the data."""
    start, end = datasets.window_for(day, cfg.dataset.window_days)
    if start < settings.data_start:
        first = settings.data_start + dt.timedelta(days=cfg.dataset.window_days - 1)
        raise WindowError(
            f"dataset version {day.isoformat()} needs raw data from {start.isoformat()}, before the first "
            f"day of data {settings.data_start.isoformat()}; the first buildable version is {first.isoformat()}"
        )
    return start, end


def missing_partitions(lake: Lake, start: dt.date, end: dt.date) -> list[str]:
    return lake.missing(required_partitions(start, end))


def staging_root(settings: Settings) -> Path:
    return Path(settings.state_dir).resolve() / "staging"


def _mirror_raw(lake: Lake, start: dt.date, end: dt.date, local_raw: Path) -> None:
    """Copy the committed raw partitions of a window from a remote lake to local disk."""
    for directory in required_partitions(start, end):
        commit = lake.read_commit(directory)
        target = local_raw.parent / directory
        target.mkdir(parents=True, exist_ok=True)
        for rel in commit.file_paths():
            destination = local_raw.parent / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(lake.read_bytes(rel))
        marker = {"attempt": commit.attempt, "files": list(commit.files), "committed_at": commit.committed_at}
        (target / "_SUCCESS").write_text(json.dumps(marker))


def prepare(
    kind: str,
    name: str,
    version: str,
    start: dt.date,
    end: dt.date,
    lake: Lake | None = None,
    settings: Settings | None = None,
    cfg: PipelineConfig | None = None,
) -> BuildPlan:
    """Stage the inputs of one build and check them before Spark starts.

    Bad input (uncommitted partition, missing column, wrong type) is quarantined with its
    reason and raises :class:`BadInputError`.
    """
    settings = settings or get_settings()
    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings(settings)
    staging = staging_root(settings) / kind / name / version
    if staging.exists():
        shutil.rmtree(staging)  # a retry starts from scratch: nothing half-built survives
    staging.mkdir(parents=True)
    if lake.is_local:
        raw_root = lake.path("raw")
    else:
        # pyspark from PyPI has no hadoop-aws (no s3a://): Spark reads a local mirror instead.
        raw_root = str(staging / "input" / "raw")
        _mirror_raw(lake, start, end, Path(raw_root))
    try:
        inputs = job.resolve_inputs(raw_root, end, (end - start).days + 1)
        job.check_schemas(raw_root, inputs)
    except job.BadInput as err:
        reason = f"bad raw input for {name} {version}: {err}"
        where = datasets.quarantine(lake, name, version, reason)
        raise BadInputError(f"{reason} (quarantined at {lake.uri(where)})") from None
    dataset = cfg.dataset
    return BuildPlan(
        kind=kind,
        name=name,
        version=version,
        start=start,
        end=end,
        raw_root=raw_root,
        staging_dir=str(staging / "output"),
        seed=dataset.seed,
        validation_fraction=dataset.validation_fraction,
        subsample_fraction=dataset.subsample_fraction if kind == "training" else 1.0,
        validation_split=dataset.validation_split,
        validation_days=dataset.validation_days,
        holdout_days=dataset.holdout_days if kind == "training" else 0,
    )


def accepted_days(accept_days: Any, override_reason: Any) -> tuple[list[str], str | None]:
    """Validate the override params: ISO days, and a reason whenever days are accepted."""
    days = [accept_days] if isinstance(accept_days, str) else list(accept_days or [])
    try:
        days = sorted({dt.date.fromisoformat(str(d).strip()).isoformat() for d in days if str(d).strip()})
    except ValueError:
        raise ValueError(f"param accept_days={accept_days!r}: expected a list of days (YYYY-MM-DD)") from None
    reason = str(override_reason or "").strip() or None
    if days and not reason:
        raise ValueError(
            f"param accept_days={days} needs override_reason: say why these days are accepted "
            "(it is recorded on the dataset manifest and the model version)"
        )
    return days, reason


def gate(
    plan: BuildPlan,
    lake: Lake | None = None,
    cfg: PipelineConfig | None = None,
    accept_days: list[str] | None = None,
    override_reason: str | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the staged output and the window's raw days; on failure quarantine and raise.

    Failures of ``accept_days`` (with ``override_reason``) become warnings, recorded in the
    summary's ``override`` (copied to the manifest's ``quality``).
    """
    from mlpipeline.data.quality import validate_raw, validate_staged

    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    days, reason = accepted_days(accept_days, override_reason)
    staging = Path(plan.staging_dir)
    if not (staging / "job_stats.json").exists():
        raise datasets.DatasetError(f"staging {staging} is incomplete (no job_stats.json): rerun the build")
    report = validate_staged(staging, cfg.quality, plan.start, plan.end, plan.subsample_fraction)
    report.add(*validate_raw(lake, cfg.quality, plan.start, plan.end))
    if days:
        report.accept(days, reason, {"run": run} if run else None)
    title = f"Quality gate: {plan.name} {plan.version} (window {plan.start}..{plan.end})"
    markdown = report.to_markdown(title)
    reports = locations.quality_report_dir(plan.name, plan.version)
    lake.write_bytes(f"{reports}/summary.md", markdown.encode())
    lake.write_bytes(f"{reports}/validation.json", report.to_json().encode())
    if not report.success:
        counts = ", ".join(f"{c} {n}" for c, n in report.by_class(report.failures, counts=True).items() if n)
        failed = "; ".join(f.describe() for f in report.failures)
        reason = f"{len(report.failures)} check(s) failed ({counts}): {failed}"
        where = datasets.quarantine(
            lake, plan.name, plan.version, reason, staging, report.to_json(), markdown
        )
        raise QualityGateError(
            f"{plan.name} {plan.version} refused by the quality gate, nothing published "
            f"(quarantined at {lake.uri(where)}; summary.md lists each check and the action): {reason}"
        )
    return report.summary()


def publish_training(
    plan: BuildPlan,
    quality: dict[str, Any],
    run: dict[str, Any] | None = None,
    lake: Lake | None = None,
    cfg: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Publish a validated training dataset; returns the manifest."""
    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    staging = Path(plan.staging_dir)
    frames = datasets.staged_splits(staging)
    job_stats = json.loads((staging / "job_stats.json").read_text())
    manifest = datasets.build_manifest(
        name=plan.name,
        kind="training",
        version=plan.version,
        window=(plan.start, plan.end),
        frames=frames,
        job_stats=job_stats,
        quality=quality,
        params={
            "seed": plan.seed,
            "validation_split": plan.validation_split,
            "validation_days": plan.validation_days,
            "validation_fraction": plan.validation_fraction,
            "holdout_days": plan.holdout_days,
            "subsample_fraction": plan.subsample_fraction,
            "window_days": plan.days,
        },
        golden=datasets.current_golden(lake, cfg.golden.name),
        run=run,
    )
    commit = datasets.publish_dataset(lake, staging, manifest)
    shutil.rmtree(staging.parent, ignore_errors=True)
    manifest["path"] = lake.uri(commit.directory)
    return manifest


def publish_golden(
    plan: BuildPlan,
    quality: dict[str, Any],
    sample_size: int,
    run: dict[str, Any] | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Sample and publish a golden set (frozen: an existing version is refused)."""
    import pandas as pd

    lake = lake or Lake.from_settings()
    staging = Path(plan.staging_dir)
    frames = datasets.staged_splits(staging)
    everything = pd.concat(list(frames.values()), ignore_index=True)
    golden = datasets.sample_golden(everything, sample_size, plan.seed)
    job_stats = json.loads((staging / "job_stats.json").read_text())
    manifest = datasets.build_manifest(
        name=plan.name,
        kind="golden",
        version=plan.version,
        window=(plan.start, plan.end),
        frames={"golden": golden},
        job_stats=job_stats,
        quality=quality,
        params={"seed": plan.seed, "sample_size": sample_size, "built_rows": len(everything)},
        golden=None,
        run=run,
    )
    commit = datasets.publish_golden_frame(lake, golden, manifest)
    shutil.rmtree(staging.parent, ignore_errors=True)
    manifest["path"] = lake.uri(commit.directory)
    return manifest


def asset_extra(manifest: dict[str, Any]) -> dict[str, Any]:
    """The small summary a dataset Asset event carries."""
    golden = manifest.get("golden") or {}
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "window_start": manifest["window"]["start"],
        "window_end": manifest["window"]["end"],
        "rows": manifest["rows"],
        "label_rate": manifest["label_rate"],
        "content_hash": manifest["content_hash"],
        "path": manifest.get("path"),
        "golden_version": golden.get("version"),
        "overlaps_golden": golden.get("overlaps_window"),
    }
