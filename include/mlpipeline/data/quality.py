"""The quality gate of every dataset: Great Expectations Core (GX 1.x) on the staged output.

Three batches are validated, each with its own suite:

* ``rows``: the dataset's rows (train + validation) against the suite kept in the repo
  (``include/config/expectations/``) plus window-dependent expectations from the pipeline
  settings (row count, label rate, weather coverage per origin);
* ``days``: one row per day of the window with its number of rows (every day present and
  above the minimum: catches an empty or truncated partition);
* ``job``: one row of the Spark job's counters (duplicate and cancelled shares).

The raw partitions of the window are checked too (:mod:`mlpipeline.data.raw_checks`:
integrity and consistency; :mod:`mlpipeline.data.profiles`: each day against its history).

The gate fails closed: any failed check fails the whole validation, unless an operator
accepted that day on purpose (DAG params ``accept_days`` + ``override_reason``): its failures
become warnings and the override is recorded. The result is kept as JSON and as a readable
Markdown summary listing each failed check, grouped by class, with observed vs expected and
the on-call action.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.data.datasets import SPLITS
from mlpipeline.pipeline_config import QualityConfig

if TYPE_CHECKING:
    import pandas as pd

    from mlpipeline.lake import Lake

log = logging.getLogger(__name__)


#: Classes of checks, in report order, with what on-call does when one fails.
CLASSES: dict[str, str] = {
    "schema": "Fix or re-land the raw days the failing column comes from, then rerun the run.",
    "integrity": "Re-land the day (and its dimension snapshot) from upstream; if the new keys are real, "
    "accept it: rerun with accept_days=[day] and override_reason.",
    "consistency": "Re-land the day from upstream (a field no longer agrees with the ones it is derived from); "
    "accept it only with accept_days + override_reason.",
    "history": "Check the day upstream: re-land it if it is wrong; if the change is real (an event, a new "
    "schedule), rerun with accept_days=[day] and override_reason.",
}


@dataclass
class Failure:
    batch: str
    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    observed: Any
    check_class: str = "schema"
    day: str | None = None

    @property
    def action(self) -> str:
        return CLASSES[self.check_class]

    def describe(self) -> str:
        where = f" on column '{self.column}'" if self.column else ""
        condition = self.kwargs.get("row_condition")
        if isinstance(condition, dict):
            condition = condition.get("pass_through_filter", condition)
        if condition:
            where += f" where {condition}"
        hidden = ("column", "batch_id", "row_condition", "condition_parser")
        shown = {k: v for k, v in self.kwargs.items() if k not in hidden}
        if self.check_class == "schema" and not self.day:
            scope = self.batch
        else:
            scope = " ".join(p for p in (self.check_class, self.batch, self.day) if p)
        return f"[{scope}] {self.expectation}{where} {shown}: observed {self.observed}"


@dataclass
class QualityReport:
    suite: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    warnings: list[Failure] = field(default_factory=list)
    override: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        out = {
            "suite": self.suite,
            "success": self.success,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "failed_by_class": self.by_class(self.failures, counts=True),
        }
        if self.override:
            out["override"] = self.override | {"accepted_failures": len(self.warnings)}
        return out

    @staticmethod
    def by_class(failures: list[Failure], counts: bool = False) -> dict[str, Any]:
        groups: dict[str, list[Failure]] = {c: [] for c in CLASSES}
        for f in failures:
            groups[f.check_class].append(f)
        return {c: len(g) for c, g in groups.items()} if counts else groups

    def add(self, failures: list[Failure], evaluated: int) -> None:
        """Merge more checks' failures into the report."""
        self.failures += failures
        self.evaluated += evaluated
        self.success = not self.failures

    def accept(self, days: list[str], reason: str, who: dict[str, Any] | None = None) -> None:
        """Turn the failures of the accepted ``days`` into warnings (an operator's documented override)."""
        accepted = [f for f in self.failures if f.day and f.day in days]
        self.failures = [f for f in self.failures if f not in accepted]
        self.warnings += accepted
        self.success = not self.failures
        self.override = {"accept_days": sorted(days), "reason": reason, **(who or {})}

    def to_json(self) -> str:
        def entry(f: Failure) -> dict[str, Any]:
            return f.__dict__ | {"description": f.describe(), "action": f.action}

        payload = {
            **self.summary(),
            "failures": [entry(f) for f in self.failures],
            "failures_by_class": {
                c: [entry(f) for f in g] for c, g in self.by_class(self.failures).items() if g
            },
            "warnings": [entry(f) for f in self.warnings],
            "results": self.results,
        }
        return json.dumps(payload, indent=2, sort_keys=True, default=str)

    def to_markdown(self, title: str) -> str:
        lines = [
            f"# {title}",
            "",
            f"- suite: `{self.suite}`",
            f"- result: **{'PASSED' if self.success else 'FAILED'}** "
            f"({self.evaluated - len(self.failures)}/{self.evaluated} checks met)",
            "- failed by class: "
            + ", ".join(f"{c} {n}" for c, n in self.by_class(self.failures, counts=True).items()),
        ]
        if self.override:
            lines.append(
                f"- **override**: days {', '.join(self.override['accept_days'])} accepted on purpose "
                f"({len(self.warnings)} failure(s) kept as warnings): {self.override['reason']}"
            )
        lines.append("")
        for title_, failures in (("Failed", self.failures), ("Accepted (override)", self.warnings)):
            for check_class, group in self.by_class(failures).items():
                if not group:
                    continue
                lines += [
                    f"## {title_}: {check_class} ({len(group)})",
                    "",
                    f"On-call: {CLASSES[check_class]}",
                    "",
                    "| day | batch | check | column | expected | observed |",
                    "|---|---|---|---|---|---|",
                ]
                for f in group:
                    expected = {k: v for k, v in f.kwargs.items() if k not in ("column", "batch_id")}
                    lines.append(
                        f"| {f.day or 'window'} | {f.batch} | {f.expectation} | {f.column or ''} "
                        f"| `{expected}` | `{f.observed}` |"
                    )
                lines.append("")
        return "\n".join(lines) + "\n"


def read_staged(staging_dir: str | Path) -> pd.DataFrame:
    """Every row of a staged dataset (train, validation, recent), with a ``split`` column."""
    import pandas as pd

    frames = []
    for split in SPLITS:
        directory = Path(staging_dir) / split
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        for path in files:
            frames.append(pd.read_parquet(path, dtype_backend="numpy_nullable").assign(split=split))
    if not frames:
        raise FileNotFoundError(f"staged dataset {staging_dir} holds no Parquet files")
    return pd.concat(frames, ignore_index=True)


def _observed(result: Any) -> Any:
    body = result.result or {}
    if "observed_value" in body:
        return body["observed_value"]
    if "unexpected_count" in body:
        return {
            "unexpected_count": body.get("unexpected_count"),
            "unexpected_percent": round(float(body.get("unexpected_percent") or 0), 4),
            "examples": [str(v) for v in (body.get("partial_unexpected_list") or [])[:5]],
        }
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"error: {result.exception_info.get('exception_message')}"
    return body


def _runtime_expectations(cfg: QualityConfig, days: int, subsample: float) -> list[dict]:
    """Expectations whose bounds depend on the window and the pipeline settings."""
    min_rows_per_day = int(cfg.min_rows_per_day * subsample)
    rows = [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": max(1, min_rows_per_day * days)},
        },
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {
                "column": "is_delayed",
                "min_value": cfg.label_rate_min,
                "max_value": cfg.label_rate_max,
            },
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "origin", "value_set": list(cfg.origins)},
        },
    ]
    for origin in cfg.origins:
        rows.append(
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {
                    "column": "temp",
                    "mostly": cfg.min_weather_coverage_per_origin,
                    "row_condition": f'origin=="{origin}"',
                    "condition_parser": "pandas",
                },
                "meta": {"notes": f"weather must cover the flights from {origin}"},
            }
        )
    day_rows = [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": days}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "rows", "min_value": min_rows_per_day},
        },
    ]
    job = [
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "duplicate_share", "min_value": 0, "max_value": cfg.max_duplicate_share},
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "cancelled_share", "min_value": 0, "max_value": cfg.max_cancelled_share},
        },
    ]
    return [("rows", rows), ("days", day_rows), ("job", job)]


def validate_staged(
    staging_dir: str | Path,
    cfg: QualityConfig,
    window_start: dt.date,
    window_end: dt.date,
    subsample: float = 1.0,
) -> QualityReport:
    """Run the gate on a staged dataset (written by the Spark job) and return the report."""
    import pandas as pd

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    staging_dir = Path(staging_dir)
    stats = json.loads((staging_dir / "job_stats.json").read_text())
    rows = read_staged(staging_dir)
    days = (window_end - window_start).days + 1
    all_days = pd.DataFrame({"day": [window_start + dt.timedelta(days=i) for i in range(days)]})
    per_day = rows.groupby("flight_date").size().rename("rows").reset_index()
    per_day = all_days.merge(per_day, left_on="day", right_on="flight_date", how="left")
    per_day = per_day.assign(rows=per_day["rows"].fillna(0).astype("int64"))[["day", "rows"]]
    per_day["day"] = per_day["day"].astype(str)
    input_rows = max(int(stats.get("input_rows", 0)), 1)
    job = pd.DataFrame(
        [
            {
                "duplicate_share": stats.get("duplicates_dropped", 0) / input_rows,
                "cancelled_share": stats.get("cancelled_dropped", 0) / input_rows,
            }
        ]
    )
    batches = {"rows": rows.drop(columns=["split"]), "days": per_day, "job": job}

    suite_doc = json.loads(cfg.suite_path.read_text())
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("staged")
    expectations = {"rows": list(suite_doc["expectations"])}
    for batch, extra in _runtime_expectations(cfg, days, subsample):
        expectations.setdefault(batch, []).extend(extra)

    failures: list[Failure] = []
    results: dict[str, Any] = {}
    evaluated = 0
    for batch, frame in batches.items():
        definition = source.add_dataframe_asset(batch).add_batch_definition_whole_dataframe(batch)
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"{suite_doc['name']}.{batch}", expectations=expectations[batch])
        )
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"gate.{batch}", data=definition, suite=suite)
        )
        outcome = validation.run(batch_parameters={"dataframe": frame})
        results[batch] = outcome.describe_dict()
        for result in outcome.results:
            evaluated += 1
            if not result.success:
                config = result.expectation_config
                failures.append(
                    Failure(
                        batch,
                        config.type,
                        config.kwargs.get("column"),
                        dict(config.kwargs),
                        _observed(result),
                    )
                )
    report = QualityReport(suite_doc["name"], not failures, evaluated, failures, results)
    for failure in failures:
        log.error("quality gate: %s", failure.describe())
    return report


def read_raw_window(lake: Lake, start: dt.date, end: dt.date) -> tuple[dict, dict]:
    """The window's daily raw tables (per day) and the dimension snapshots of its end day."""
    from mlpipeline import locations
    from mlpipeline.data.landing import iter_days

    days = {
        day: {t: lake.read_frame(locations.raw_partition(t, day)) for t in ("flights", "weather")}
        for day in iter_days(start, end)
    }
    dims = {t: lake.read_frame(locations.raw_partition(t, end)) for t in ("planes", "airlines", "airports")}
    return days, dims


def validate_raw(lake: Lake, cfg: QualityConfig, start: dt.date, end: dt.date) -> tuple[list[Failure], int]:
    """Integrity, consistency and history checks of the window's raw days (failures, evaluated)."""
    from mlpipeline.data import profiles, raw_checks

    days, dims = read_raw_window(lake, start, end)
    found, evaluated = raw_checks.check_window(days, dims, cfg.raw_min_share)
    stored: dict[dt.date, dict[str, float] | None] = {}
    for i in range(cfg.history.days, 0, -1):  # the history of the window's first day
        day = start - dt.timedelta(days=i)
        stored[day] = profiles.load_or_compute(lake, day)
    for day, frames in days.items():
        stored[day] = profiles.load_or_compute(lake, day, frames)
    history, judged = profiles.check_days(stored, sorted(days), cfg.history)
    failures = [Failure(**f) for f in found + history]
    for failure in failures:
        log.error("quality gate: %s", failure.describe())
    return failures, evaluated + judged
