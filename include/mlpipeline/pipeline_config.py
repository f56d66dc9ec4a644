"""Pipeline settings file (``include/config/pipeline.yaml``, or ``MLP_PIPELINE_CONFIG``).

Typed with pydantic: a wrong key or value fails with its path in the file and the reason.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipeline.settings import PROJECT_ROOT, get_settings

CONFIG_DIR = PROJECT_ROOT / "include" / "config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    window_days: int = Field(ge=1, le=366)
    validation_split: Literal["time", "key_hash"] = "time"
    validation_days: int = Field(default=5, ge=1, le=90)
    validation_fraction: float = Field(gt=0, lt=1)
    holdout_days: int = Field(default=0, ge=0, le=90)
    subsample_fraction: float = Field(gt=0, le=1)
    seed: int
    sensor_poke_interval_s: int = Field(ge=1)
    sensor_timeout_s: int = Field(ge=1)


class HistoryRule(_Strict):
    k: float = Field(gt=0)  # robust scales from the history's median
    floor_abs: float = Field(ge=0)  # the scale is at least this…
    floor_rel: float = Field(ge=0, default=0.0)  # …and at least this share of |median|


class HistoryConfig(_Strict):
    days: int = Field(ge=1, le=90)
    min_days: int = Field(ge=1)
    rules: dict[str, HistoryRule]

    @model_validator(mode="after")
    def _kinds(self) -> HistoryConfig:
        missing = {"rows", "null", "distinct", "share", "quantile", "label"} - set(self.rules)
        if missing:
            raise ValueError(f"quality.history.rules lacks {', '.join(sorted(missing))}")
        if self.min_days > self.days:
            raise ValueError("quality.history.min_days is above quality.history.days")
        return self


class QualityConfig(_Strict):
    suite: str
    min_rows_per_day: int = Field(ge=0)
    label_rate_min: float = Field(ge=0, le=1)
    label_rate_max: float = Field(ge=0, le=1)
    max_duplicate_share: float = Field(ge=0, le=1)
    max_cancelled_share: float = Field(ge=0, le=1)
    min_weather_coverage_per_origin: float = Field(ge=0, le=1)
    origins: tuple[str, ...]
    raw_min_share: dict[str, float]  # integrity/consistency check → least share of agreeing rows
    history: HistoryConfig

    @model_validator(mode="after")
    def _bounds(self) -> QualityConfig:
        from mlpipeline.data.raw_checks import BY_NAME

        if self.label_rate_min > self.label_rate_max:
            raise ValueError("quality.label_rate_min is above quality.label_rate_max")
        unknown = set(self.raw_min_share) - set(BY_NAME)
        missing = set(BY_NAME) - set(self.raw_min_share)
        if unknown or missing:
            raise ValueError(f"quality.raw_min_share: unknown {sorted(unknown)}, missing {sorted(missing)}")
        return self

    @property
    def suite_path(self) -> Path:
        return CONFIG_DIR / "expectations" / self.suite


class GoldenConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    default_version: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    default_start: dt.date
    default_end: dt.date
    default_sample_size: int = Field(ge=100)
    refresh_on_stale: bool = False  # model_monitoring triggers golden_dataset when the golden set is stale
    refresh_days: int = Field(default=14, ge=1, le=90)  # days of the next golden version
    stale_threshold: float = Field(default=0.15, gt=0)  # per-flight columns; temp etc. as in monitoring


class TrainingConfig(_Strict):
    model_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    experiment: str
    n_trials: int = Field(ge=1, description="a search needs at least one trial")
    timeout_s: int = Field(ge=1)
    seed: int
    num_boost_round: int = Field(ge=1)
    early_stopping_rounds: int = Field(ge=1)
    pruning_warmup_rounds: int = Field(ge=0)
    nthread: int = Field(ge=1)
    reference_sample_rows: int = Field(ge=100)
    search_space: dict[str, tuple[float, float] | tuple[float, float, str]]

    @model_validator(mode="after")
    def _space(self) -> TrainingConfig:
        for name, bounds in self.search_space.items():
            if bounds[0] > bounds[1]:
                raise ValueError(f"training.search_space.{name}: low {bounds[0]} is above high {bounds[1]}")
            if len(bounds) == 3 and bounds[2] != "log":
                raise ValueError(f"training.search_space.{name}: third item must be 'log'")
        return self


class DeploymentConfig(_Strict):
    primary_metric: str = Field(pattern=r"^(roc_auc|pr_auc|log_loss|brier)$")
    min_uplift: float
    bootstrap_resamples: int = Field(ge=100)
    bootstrap_seed: int
    slices: tuple[str, ...]
    slice_min_rows: int = Field(ge=1)
    slice_tolerance: float = Field(ge=0)
    recent_min_rows: int = Field(default=500, ge=1)  # fewer recent labelled rows: the golden set decides
    golden_tolerance: float = Field(default=0.02, ge=0)  # golden-set loss allowed when the recent set decides
    golden_stale_tolerance: float = Field(default=0.10, ge=0)  # …while the golden set is stale
    max_p99_latency_ms: float = Field(gt=0)
    max_model_bytes: int = Field(gt=0)
    engineering_repeats: int = Field(ge=10)

    @property
    def higher_is_better(self) -> bool:
        return self.primary_metric in ("roc_auc", "pr_auc")


class MonitoringConfig(_Strict):
    sensor_poke_interval_s: int = Field(ge=1)
    sensor_timeout_s: int = Field(ge=1)
    min_rows: int = Field(ge=1)
    drift_window_days: int = Field(ge=1, le=60)
    drift_max_rows: int = Field(ge=1000)
    drift_ignore: tuple[str, ...] = ()
    drift_threshold: float = Field(gt=0)
    drift_threshold_overrides: dict[str, float] = Field(default_factory=dict)
    drift_share_threshold: float = Field(gt=0, le=1)
    labels_delay_days: int = Field(ge=0)
    min_labelled_rows: int = Field(ge=1)
    max_roc_auc_drop: float = Field(ge=0)
    max_log_loss_increase: float = Field(ge=0)
    max_calibration_error: float = Field(gt=0, le=1)
    max_p99_latency_ms: float = Field(gt=0)
    max_error_rate: float = Field(ge=0, le=1)
    max_memory_mb: float = Field(gt=0)
    rollback_window_days: float = Field(ge=0)
    server_timeout_s: float = Field(gt=0)

    def drift_threshold_for(self, column: str) -> float:
        return self.drift_threshold_overrides.get(column, self.drift_threshold)


class PipelineConfig(_Strict):
    dataset: DatasetConfig
    quality: QualityConfig
    golden: GoldenConfig
    training: TrainingConfig
    deployment: DeploymentConfig
    monitoring: MonitoringConfig

    def fingerprint(self) -> str:
        """A short hash of every pipeline setting (tagged on models: which settings made them)."""
        import hashlib
        import json

        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


class PipelineConfigError(ValueError):
    """The pipeline settings file is missing or invalid."""


def load_pipeline_config(path: Path) -> PipelineConfig:
    import yaml

    # libyaml's loader when pyyaml has it: 10x the pure-Python one, and every DAG file parse loads this.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        raw = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)
    except OSError as err:
        raise PipelineConfigError(f"cannot read pipeline settings {path}: {err}") from None
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise PipelineConfigError(f"invalid pipeline settings {path}: {problems}") from None


@functools.cache
def get_pipeline_config() -> PipelineConfig:
    """The pipeline settings the environment selects (cached)."""
    return load_pipeline_config(get_settings().pipeline_config)
