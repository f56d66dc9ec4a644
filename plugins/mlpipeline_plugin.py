"""Registers the pipeline's Airflow extensions (the "MLflow run" and "Report" task buttons).

Loaded by Airflow's plugins manager from the plugins folder; imports stay light (no pandas,
mlflow, ...) because every Airflow component loads this file.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from mlpipeline_airflow.links import MlflowRunLink, ReportLink


class MlpipelinePlugin(AirflowPlugin):
    """Global extra links shown on every task instance, enabled where the task pushed a URL."""

    name = "mlpipeline"
    global_operator_extra_links = [MlflowRunLink(), ReportLink()]  # noqa: RUF012 (AirflowPlugin API)
