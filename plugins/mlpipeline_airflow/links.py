"""Global operator extra links: buttons on every task instance that open what the task recorded.

A task records a link with :func:`push_link` (an XCom under a fixed key); the API server shows
the button on every task and enables it only where that key was pushed. Links are evaluated in
the API server on the *serialized* operator, so :meth:`get_link` reads the XCom straight from the
metadata DB (as Airflow's own ``XComOperatorLink`` does) and never runs task code.

| Button       | XCom key            | Pushed by                                     |
|--------------|---------------------|-----------------------------------------------|
| "MLflow run" | ``mlflow_run_url``  | training / evaluation tasks (the MLflow run)  |
| "Report"     | ``report_url``      | monitoring / validation tasks (an HTML report) |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

MLFLOW_RUN_URL_KEY = "mlflow_run_url"
REPORT_URL_KEY = "report_url"
LINK_KEYS = (MLFLOW_RUN_URL_KEY, REPORT_URL_KEY)
ALLOWED_SCHEMES = ("http://", "https://")

log = logging.getLogger(__name__)


def _checked_url(value: object) -> str | None:
    """``value`` if it is an http(s) URL (what a browser button can open safely), else ``None``."""
    if isinstance(value, str) and value.strip().lower().startswith(ALLOWED_SCHEMES):
        return value.strip()
    return None


def push_link(context_or_ti: Mapping[str, Any] | Any, key: str, url: str) -> None:
    """Record ``url`` as this task instance's link for ``key`` (one of :data:`LINK_KEYS`).

    ``context_or_ti`` is the task context (``get_current_context()``) or its ``ti``.
    """
    if key not in LINK_KEYS:
        raise ValueError(f"unknown link key {key!r}; use one of {', '.join(LINK_KEYS)}")
    checked = _checked_url(url)
    if checked is None:
        raise ValueError(f"link {key!r} must be an http(s) URL, got {url!r}")
    ti = context_or_ti["ti"] if isinstance(context_or_ti, Mapping) else context_or_ti
    ti.xcom_push(key=key, value=checked)


def read_link(xcom_key: str, ti_key: TaskInstanceKey) -> str:
    """The URL pushed under ``xcom_key`` by the task instance ``ti_key``; ``""`` if there is none."""
    # Imported here: this module is also imported by task code, which must not touch the DB.
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=xcom_key,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if row is None or row.value is None:
        return ""
    value = row.value
    if isinstance(value, (str, bytes)):
        try:  # stored JSON-encoded (what XComOperatorLink expects); a bare string is used as is
            value = json.loads(value)
        except ValueError:
            pass
    url = _checked_url(value)
    if url is None:
        log.warning("XCom %r of %s is not an http(s) URL (%.80r); link disabled", xcom_key, ti_key, value)
        return ""
    return url


@attrs.define()
class XComUrlLink(BaseOperatorLink):
    """A button that opens the URL a task pushed under :attr:`xcom_key` (disabled if none)."""

    name: ClassVar[str]
    xcom_key: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        return read_link(self.xcom_key, ti_key)


@attrs.define()
class MlflowRunLink(XComUrlLink):
    """Opens the MLflow run the task logged to."""

    name: ClassVar[str] = "MLflow run"
    xcom_key: ClassVar[str] = MLFLOW_RUN_URL_KEY


@attrs.define()
class ReportLink(XComUrlLink):
    """Opens the report the task wrote (data validation, drift, model evaluation)."""

    name: ClassVar[str] = "Report"
    xcom_key: ClassVar[str] = REPORT_URL_KEY
