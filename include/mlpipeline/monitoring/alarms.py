"""Alarms: one JSON object per problem, sent to every configured channel.

Always: the task log and ``alarms/alarms.jsonl`` in the lake (one line per alarm; an alarm
with the same ``id`` is written once, so a retried task does not repeat it). Also, when the
Airflow connection exists: Slack (``MLP_ALARM_SLACK_CONN_ID``, type ``slackwebhook``) and
e-mail (``MLP_ALARM_SMTP_CONN_ID``, type ``smtp``, to ``MLP_ALARM_EMAIL_TO``). A channel that
fails is logged and does not stop the others, nor the task that raised the alarm.

Fields: ``id``, ``time``, ``what``, ``severity``, ``model``, ``version``, ``figures``,
``thresholds``, ``report_url``, ``suggested_action``, ``source`` (dag/run/task), ``channels``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any

from mlpipeline.lake import Lake
from mlpipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

ALARMS_PATH = "alarms/alarms.jsonl"


def alarm_id(alarm: dict[str, Any]) -> str:
    source = alarm.get("source") or {}
    key = json.dumps(
        [
            source.get("dag_id"),
            source.get("run_id"),
            source.get("task_id"),
            alarm.get("check"),
            alarm.get("what"),
        ],
        default=str,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_alarms(lake: Lake) -> list[dict[str, Any]]:
    if not lake.exists(ALARMS_PATH):
        return []
    return [json.loads(line) for line in lake.read_bytes(ALARMS_PATH).decode().splitlines() if line.strip()]


def _connection(conn_id: str):
    """The Airflow connection ``conn_id`` or ``None`` (not configured / no Airflow context)."""
    if not conn_id:
        return None
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:
        return None


def format_text(alarm: dict[str, Any]) -> str:
    lines = [
        f"[{alarm.get('severity', 'warning').upper()}] {alarm['what']}",
        f"model: {alarm.get('model')} v{alarm.get('version') or '-'}",
    ]
    figures, thresholds = alarm.get("figures") or {}, alarm.get("thresholds") or {}
    if figures:
        lines.append("figures: " + ", ".join(f"{k}={_short(v)}" for k, v in figures.items()))
    if thresholds:
        lines.append("thresholds: " + ", ".join(f"{k}={_short(v)}" for k, v in thresholds.items()))
    if alarm.get("report_url"):
        lines.append(f"report: {alarm['report_url']}")
    lines.append(f"action: {alarm.get('suggested_action')}")
    source = alarm.get("source") or {}
    if source:
        lines.append(f"source: {source.get('dag_id')}/{source.get('run_id')}/{source.get('task_id')}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)[:200]
    return str(value)


def send_slack(conn_id: str, text: str) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=text)


def send_email(conn_id: str, to: list[str], alarm: dict[str, Any], text: str) -> None:
    import html

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    subject = f"[mlpipeline {alarm.get('severity', 'warning')}] {alarm['what'][:120]}"
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=to, subject=subject, html_content=f"<pre>{html.escape(text)}</pre>")


def raise_alarm(
    alarm: dict[str, Any], lake: Lake | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Complete ``alarm`` (id, time) and send it to every channel; return it with ``channels``."""
    settings = settings or get_settings()
    alarm = {"time": dt.datetime.now(dt.UTC).isoformat(), "report_url": None, **alarm}
    alarm["id"] = alarm.get("id") or alarm_id(alarm)
    text = format_text(alarm)
    log.warning("ALARM %s\n%s", alarm["id"], text)
    channels = ["log"]
    lake = lake or Lake.from_settings(settings)
    try:
        if alarm["id"] not in {a.get("id") for a in read_alarms(lake)}:
            lake.append_line(ALARMS_PATH, json.dumps(alarm, sort_keys=True, default=str))
        channels.append("file")
    except Exception:
        log.exception("alarm %s: could not write %s", alarm["id"], ALARMS_PATH)
    if _connection(settings.alarm_slack_conn_id) is not None:
        try:
            send_slack(settings.alarm_slack_conn_id, text)
            channels.append("slack")
        except Exception:
            log.exception("alarm %s: Slack webhook %s failed", alarm["id"], settings.alarm_slack_conn_id)
    recipients = [r.strip() for r in settings.alarm_email_to.split(",") if r.strip()]
    if recipients and _connection(settings.alarm_smtp_conn_id) is not None:
        try:
            send_email(settings.alarm_smtp_conn_id, recipients, alarm, text)
            channels.append("email")
        except Exception:
            log.exception("alarm %s: e-mail via %s failed", alarm["id"], settings.alarm_smtp_conn_id)
    alarm["channels"] = channels
    return alarm


def source_of(context: Any) -> dict[str, Any]:
    """dag/run/task of an Airflow task context (for an alarm's ``source``)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
    }


def failure_alarm(context: Any, severity: str = "critical") -> dict[str, Any]:
    """The alarm for a task that failed for good (``on_failure_callback``)."""
    source = source_of(context)
    error = context.get("exception")
    what = f"task {source['dag_id']}.{source['task_id']} failed"
    if error is not None:
        what += f": {type(error).__name__}: {str(error)[:300]}"
    params = context.get("params") or {}
    return {
        "what": what,
        "check": "task_failure",
        "severity": severity,
        "model": None,
        "version": None,
        "figures": {"try_number": source.get("try_number")},
        "thresholds": {},
        "suggested_action": f"open the task log of run {source['run_id']}; fix the cause, then clear the task"
        + (f" (params: {json.dumps(dict(params), default=str)[:200]})" if params else ""),
        "source": source,
    }


def deadline_alarm(dag_id: str, deadline: str, **extra: Any) -> dict[str, Any]:
    """The alarm for a run that missed its deadline (``DeadlineAlert`` callback)."""
    return {
        "what": f"run of {dag_id} is late: not finished by its deadline {deadline}",
        "check": "deadline",
        "severity": "warning",
        "model": None,
        "version": None,
        "figures": {k: str(v) for k, v in extra.items()},
        "thresholds": {"deadline": deadline},
        "suggested_action": f"open {dag_id} in the Airflow UI: a sensor still waiting, a queue, or a slow task",
        "source": {"dag_id": dag_id, "run_id": extra.get("run_id"), "task_id": None},
    }
