"""The quality gate of every dataset: Great Expectations Core (GX 1.x) on the staged output.

Three batches are validated, each with its own suite:

* ``rows``: the dataset's rows (train + validation) against the suite kept in the repo
  (``include/config/expectations/``) plus window-dependent expectations from the pipeline
  settings (row count, label rate, weather coverage per origin);
* ``days``: one row per day of the window with its number of rows (every day present and
  above the minimum: catches an empty or truncated partition);
* ``job``: one row of the Spark job's counters (duplicate and cancelled shares).

The gate fails closed: any failed expectation fails the whole validation. The result is kept
as JSON and as a readable Markdown summary listing each failed expectation with its observed
value.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.pipeline_config import QualityConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


@dataclass
class Failure:
    batch: str
    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    observed: Any

    def describe(self) -> str:
        where = f" on column '{self.column}'" if self.column else ""
        condition = self.kwargs.get("row_condition")
        if isinstance(condition, dict):
            condition = condition.get("pass_through_filter", condition)
        if condition:
            where += f" where {condition}"
        hidden = ("column", "batch_id", "row_condition", "condition_parser")
        shown = {k: v for k, v in self.kwargs.items() if k not in hidden}
        return f"[{self.batch}] {self.expectation}{where} {shown}: observed {self.observed}"


@dataclass
class QualityReport:
    suite: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
        }

    def to_json(self) -> str:
        payload = {
            **self.summary(),
            "failures": [f.__dict__ | {"description": f.describe()} for f in self.failures],
            "results": self.results,
        }
        return json.dumps(payload, indent=2, sort_keys=True, default=str)

    def to_markdown(self, title: str) -> str:
        lines = [
            f"# {title}",
            "",
            f"- suite: `{self.suite}`",
            f"- result: **{'PASSED' if self.success else 'FAILED'}** "
            f"({self.evaluated - len(self.failures)}/{self.evaluated} expectations met)",
            "",
        ]
        if self.failures:
            lines += ["| batch | expectation | column | expected | observed |", "|---|---|---|---|---|"]
            for f in self.failures:
                expected = {k: v for k, v in f.kwargs.items() if k not in ("column", "batch_id")}
                lines.append(
                    f"| {f.batch} | {f.expectation} | {f.column or ''} | `{expected}` | `{f.observed}` |"
                )
        return "\n".join(lines) + "\n"


def read_staged(staging_dir: str | Path) -> pd.DataFrame:
    """Train and validation rows of a staged dataset, with a ``split`` column."""
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
