"""MLflow connection, tags and links shared by training, evaluation and monitoring."""

from __future__ import annotations

import os
from typing import Any

from mlpipeline.settings import get_settings

#: Model version / run tags (no dots: MLflow's search filters take them unquoted).
TAG_DAG_ID = "airflow_dag_id"
TAG_RUN_ID = "airflow_run_id"
TAG_TRY = "airflow_try_number"
TAG_DATASET = "dataset_name"
TAG_DATASET_VERSION = "dataset_version"
TAG_DATASET_HASH = "dataset_content_hash"
TAG_WINDOW_START = "data_window_start"
TAG_WINDOW_END = "data_window_end"
TAG_TRAINED_END = "data_trained_end"  # last day the model fitted or early-stopped on (window end - holdout)
TAG_VALIDATION_SPLIT = "validation_split"  # time (its days) or key_hash
TAG_GOLDEN = "golden_version"
TAG_GIT_SHA = "git_sha"
TAG_SETTINGS_HASH = "settings_hash"
TAG_SEED = "seed"
TAG_ROLE = "mlp_role"  # "training" parent run, "trial", "evaluation", "monitoring"
TAG_REFERENCE = "reference_sample"
TAG_QUALITY_OVERRIDE = "quality_override"  # days accepted past the quality gate, and why


class MlflowUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached (the task fails and Airflow retries it)."""


def tracking_uri() -> str:
    """The tracking server: connection ``mlflow_default`` if defined, else ``MLP_MLFLOW_TRACKING_URI``."""
    raw = os.environ.get("AIRFLOW_CONN_MLFLOW_DEFAULT")
    if raw:
        import json

        try:
            conn = json.loads(raw)
            scheme = conn.get("schema") or "http"
            port = f":{conn['port']}" if conn.get("port") else ""
            return f"{scheme}://{conn['host']}{port}"
        except (ValueError, KeyError):
            return raw  # URI form, e.g. http://mlflow:5000
    return get_settings().resolved_mlflow_uri


def connect(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Point MLflow at the tracking server after checking it answers; return its URI."""
    import httpx
    import mlflow

    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        # Fail fast with a clear message instead of MLflow's long retry loop.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        try:
            response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise MlflowUnavailableError(
                f"MLflow tracking server {uri} is not reachable ({type(err).__name__}: {err}); "
                "start it (make up) or fix connection mlflow_default / MLP_MLFLOW_TRACKING_URI"
            ) from None
    mlflow.set_tracking_uri(uri)
    return uri


def run_url(run_id: str, experiment_id: str, uri: str | None = None) -> str:
    """Link to a run in the MLflow UI."""
    base = (uri or tracking_uri()).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(model_name: str, version: str | int, uri: str | None = None) -> str:
    base = (uri or tracking_uri()).rstrip("/")
    return f"{base}/#/models/{model_name}/versions/{version}"


def airflow_tags(context: dict[str, Any] | None) -> dict[str, str]:
    """Tags naming the Airflow task that made something (empty outside Airflow)."""
    if not context:
        return {}
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    return {
        TAG_DAG_ID: str(getattr(dag_run, "dag_id", "") or getattr(ti, "dag_id", "")),
        TAG_RUN_ID: str(getattr(dag_run, "run_id", "") or getattr(ti, "run_id", "")),
        TAG_TRY: str(getattr(ti, "try_number", "")),
    }
