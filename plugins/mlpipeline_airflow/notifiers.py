"""Airflow notifiers that raise the pipeline's alarms (``alarms/alarms.jsonl``, log, Slack, e-mail).

``AlarmNotifier`` goes in ``on_failure_callback`` (every pipeline DAG gets it through
``DEFAULT_ARGS``): a task that failed for good raises an alarm naming the DAG, run, task and
error, with the suggested action. The channels and their configuration are those of
:mod:`mlpipeline.monitoring.alarms`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class AlarmNotifier(BaseNotifier):
    """Raise an alarm for the failed task of ``context`` (never raises itself)."""

    template_fields: Sequence[str] = ("severity",)

    def __init__(self, severity: str = "critical") -> None:
        super().__init__()
        self.severity = severity

    def notify(self, context: Any) -> None:
        try:
            from mlpipeline.monitoring import alarms

            alarms.raise_alarm(alarms.failure_alarm(context, severity=self.severity))
        except Exception:  # an alarm channel must never turn into a second failure
            log.exception("could not raise the failure alarm")


async def deadline_missed(context: Any = None, **kwargs: Any) -> None:
    """``DeadlineAlert`` callback (runs in the triggerer): the run is late; raise a warning alarm."""
    import asyncio

    await asyncio.to_thread(_raise_deadline_alarm, context or {}, kwargs)


def _raise_deadline_alarm(context: dict[str, Any], kwargs: dict[str, Any]) -> None:
    from mlpipeline.monitoring import alarms

    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    alarms.raise_alarm(
        alarms.deadline_alarm(
            str(dag_run.get("dag_id") or kwargs.get("dag_id")),
            str(deadline.get("deadline_time") or ""),
            run_id=dag_run.get("dag_run_id"),
            state=dag_run.get("state"),
            start_date=dag_run.get("start_date"),
        )
    )


def run_deadline(hours: float, enabled: bool | None = None):
    """A ``DeadlineAlert``: alarm when a run is not finished ``hours`` after it was queued.

    ``None`` unless ``MLP_DEADLINE_ALERTS`` is on: with Airflow 3.3.2 the scheduler crashes
    (``StaleDataError`` on ``dag_run``) when it prunes the deadlines of a run that succeeded,
    seen here on the embedded stack and upstream as apache/airflow#58560.
    """
    import datetime as dt

    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    if enabled is None:
        from mlpipeline.settings import get_settings

        enabled = get_settings().deadline_alerts
    if not enabled:
        return None

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=hours),
        callback=AsyncCallback(deadline_missed),
    )
