"""Defaults every pipeline DAG shares (owner, retries) and the schedule bounds from settings."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import pendulum
from mlpipeline_airflow.notifiers import AlarmNotifier, run_deadline

from mlpipeline.settings import get_settings

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    # A task that failed for good raises an alarm (alarms/alarms.jsonl, log, Slack/e-mail).
    "on_failure_callback": [AlarmNotifier()],
}

__all__ = ["DEFAULT_ARGS", "data_end", "data_start", "fail_without_retry", "run_deadline"]


def data_start() -> pendulum.DateTime:
    """First day the time-scheduled DAGs cover (``MLP_DATA_START``)."""
    day = get_settings().data_start
    return pendulum.datetime(day.year, day.month, day.day, tz="UTC")


def data_end() -> pendulum.DateTime:
    """Last day (data interval start) the time-scheduled DAGs cover (``MLP_DATA_END``)."""
    day = get_settings().data_end
    return pendulum.datetime(day.year, day.month, day.day, tz="UTC")


@contextlib.contextmanager
def fail_without_retry(*errors: type[BaseException]) -> Iterator[None]:
    """Turn deterministic errors (bad input, refused data) into a failure Airflow does not retry.

    Anything else (a server down, a full disk) fails normally and is retried.
    """
    try:
        yield
    except errors as err:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(err).__name__}: {err}") from err
