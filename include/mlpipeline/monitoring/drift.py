"""Input and prediction drift of a day of traffic against the served model's reference sample.

Evidently 0.7: one ``Report`` with ``DataDriftPreset`` (Wasserstein distance normed by the
reference's standard deviation for numeric columns, Jensen-Shannon distance for categorical
ones; per-column thresholds from ``monitoring`` settings). A column whose test fails (a type
Evidently cannot handle, no values at all) is reported with its error and left out; the rest
is still judged. Above ``drift_max_rows`` rows, a seeded uniform sample is tested.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipeline.pipeline_config import MonitoringConfig

if TYPE_CHECKING:
    import pandas as pd

PREDICTION = "prediction"
NUM_METHOD = "wasserstein"
CAT_METHOD = "jensenshannon"


class DriftInputError(ValueError):
    """The traffic or the reference sample cannot be compared (named reason)."""


@dataclass
class ColumnDrift:
    column: str
    kind: str  # numeric | categorical
    method: str
    threshold: float
    score: float | None = None
    drifted: bool = False
    error: str | None = None


@dataclass
class DriftResult:
    rows: int
    tested_rows: int
    reference_rows: int
    columns: list[ColumnDrift] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    share_threshold: float = 0.0
    sample_error_bound: float | None = None  # DKW bound of the sample's CDF, 95%

    @property
    def judged(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.error is None]

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.judged if c.drifted]

    @property
    def failed(self) -> list[str]:
        return [c.column for c in self.columns if c.error is not None]

    @property
    def share(self) -> float:
        judged = self.judged
        return len(self.drifted) / len(judged) if judged else 0.0

    @property
    def prediction_drifted(self) -> bool:
        return PREDICTION in self.drifted

    @property
    def dataset_drift(self) -> bool:
        return bool(self.judged) and self.share >= self.share_threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "columns"},
            "columns": [asdict(c) for c in self.columns],
            "share": self.share,
            "drifted": self.drifted,
            "failed": self.failed,
            "dataset_drift": self.dataset_drift,
            "prediction_drifted": self.prediction_drifted,
        }


def dkw_bound(n: int, alpha: float = 0.05) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: sup |F_sample - F_day| <= this with probability 1 - alpha."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def _prepare(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for column in numeric:
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in categorical:
        out[column] = frame[column].astype("string").fillna("UNKNOWN").astype(str)
    return out


def _run(current, reference, numeric, categorical, thresholds, share_threshold):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report(
        [
            DataDriftPreset(
                columns=[*numeric, *categorical],
                drift_share=share_threshold,
                num_method=NUM_METHOD,
                cat_method=CAT_METHOD,
                per_column_threshold=thresholds,
            )
        ]
    )
    return report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def check_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    cfg: MonitoringConfig,
    seed: int = 0,
) -> tuple[DriftResult, Any]:
    """Judge every feature (except ``drift_ignore``) and the score; return the result and the snapshot.

    ``current`` holds the features and ``prediction`` (the served score); ``reference`` the
    same columns from training time. The snapshot is ``None`` when no column could be judged.
    """
    if current.empty:
        raise DriftInputError("no traffic to compare: the day's prediction log is empty")
    if reference.empty:
        raise DriftInputError("the reference sample is empty")
    result = DriftResult(
        rows=len(current),
        tested_rows=min(len(current), cfg.drift_max_rows),
        reference_rows=len(reference),
        share_threshold=cfg.drift_share_threshold,
    )
    if len(current) > cfg.drift_max_rows:
        current = current.sample(n=cfg.drift_max_rows, random_state=seed)
        result.sample_error_bound = dkw_bound(cfg.drift_max_rows)

    wanted = [c for c in [*features, PREDICTION] if c not in cfg.drift_ignore]
    result.ignored = [c for c in features if c in cfg.drift_ignore]
    candidates: list[ColumnDrift] = []
    for column in wanted:
        kind = "categorical" if column in categorical else "numeric"
        entry = ColumnDrift(
            column=column,
            kind=kind,
            method=CAT_METHOD if kind == "categorical" else NUM_METHOD,
            threshold=cfg.drift_threshold_for(column),
        )
        result.columns.append(entry)
        if column not in current.columns:
            entry.error = "missing from the prediction log"
        elif column not in reference.columns:
            entry.error = "missing from the reference sample"
        else:
            candidates.append(entry)

    numeric = [c.column for c in candidates if c.kind == "numeric"]
    cats = [c.column for c in candidates if c.kind == "categorical"]
    cur, ref = _prepare(current, numeric, cats), _prepare(reference, numeric, cats)
    for entry in candidates:
        if entry.kind == "numeric" and cur[entry.column].notna().sum() == 0:
            entry.error = "no numeric values in the traffic (all null or not numbers)"
        elif entry.kind == "numeric" and ref[entry.column].notna().sum() == 0:
            entry.error = "no values in the reference sample"
    good = [c for c in candidates if c.error is None]
    if not good:
        return result, None
    thresholds = {c.column: c.threshold for c in good}
    numeric = [c.column for c in good if c.kind == "numeric"]
    cats = [c.column for c in good if c.kind == "categorical"]
    try:
        snapshot = _run(cur, ref, numeric, cats, thresholds, cfg.drift_share_threshold)
    except Exception:
        # Find the column(s) Evidently fails on, report them, judge the rest.
        for entry in good:
            nums = [entry.column] if entry.kind == "numeric" else []
            try:
                _run(cur, ref, nums, [entry.column] if not nums else [], thresholds, 1.0)
            except Exception as err:
                entry.error = f"evidently failed: {type(err).__name__}: {str(err)[:200]}"
        good = [c for c in good if c.error is None]
        if not good:
            return result, None
        numeric = [c.column for c in good if c.kind == "numeric"]
        cats = [c.column for c in good if c.kind == "categorical"]
        snapshot = _run(cur, ref, numeric, cats, thresholds, cfg.drift_share_threshold)
    scores = column_scores(snapshot.dict())
    for entry in good:
        score = scores.get(entry.column)
        if score is None or not math.isfinite(score):
            entry.error = "evidently returned no score"
            continue
        entry.score = score
        entry.drifted = score >= entry.threshold
    return result, snapshot


def column_scores(snapshot: dict[str, Any]) -> dict[str, float]:
    """Per-column drift scores from ``Snapshot.dict()`` (the ``ValueDrift`` metrics)."""
    out: dict[str, float] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift") and "column" in config:
            value = metric.get("value")
            out[config["column"]] = float(value) if isinstance(value, (int, float)) else float("nan")
    return out
