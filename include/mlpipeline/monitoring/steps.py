"""The ``model_monitoring`` steps: read a day of traffic, check it, decide, record, alarm.

Inputs (lake): ``serving/predictions/dt=D/`` (the server's prediction log),
``serving/labels/dt=D-k/`` (delayed labels), the served version's reference sample
(``references/…``, tag ``reference_sample`` on its training run) and its golden-set figures
(``reports/evaluation/<model>/v<N>/report.json``). Inputs (services): the model server's
``/health`` and ``/metrics``; the MLflow registry (alias ``champion``) and the audit trail.

Outputs: ``reports/drift/<model>/dt=D/report.{html,json}``, the daily record
``monitoring/<model>/dt=D/record.json``, one MLflow run per day in experiment
``<training experiment>-monitoring`` (tag ``monitoring_day``; a rerun reuses it), alarms.
Every output is keyed by the day: reruns and backfills overwrite, never duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline import locations
from mlpipeline.lake import Lake
from mlpipeline.monitoring import alarms as alarm_channels
from mlpipeline.monitoring.checks import (
    BREACH,
    OK,
    SKIPPED,
    UNAVAILABLE,
    Finding,
    consistency,
    dominant_version,
    engineering_health,
    missing_columns,
    quality_on_labels,
    scrape_server,
)
from mlpipeline.monitoring.decide import WARN, ChampionInfo, Decision, monitoring_decision
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config
from mlpipeline.settings import get_settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TAG_DAY = "monitoring_day"
TAG_MODEL = "monitored_model"
TAG_VERSION = "monitored_version"


drift_dir = locations.drift_report_dir
record_path = locations.monitoring_record


def _iso(day: dt.date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


def read_traffic(lake: Lake, day: dt.date | str) -> pd.DataFrame:
    from mlpipeline.serving.prediction_log import read_day

    return read_day(lake, _iso(day))


def read_window(lake: Lake, day: dt.date | str, days: int) -> pd.DataFrame:
    """Traffic of the ``days`` days ending ``day`` (the days that have a prediction log)."""
    import pandas as pd

    end = dt.date.fromisoformat(_iso(day))
    frames = [read_traffic(lake, end - dt.timedelta(days=i)) for i in range(days)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_labels(lake: Lake, day: dt.date | str) -> pd.DataFrame | None:
    directory = locations.labels_dir(dt.date.fromisoformat(_iso(day)))
    if not lake.is_committed(directory):
        return None
    return lake.read_frame(directory)


def _client():
    import mlflow

    from mlpipeline.training import tracking

    tracking.connect()
    return mlflow.MlflowClient()


def read_reference(lake: Lake, model: str, version: str) -> pd.DataFrame:
    """The reference sample kept when ``version`` was trained."""
    import io

    import pandas as pd

    from mlpipeline.training import tracking

    client = _client()
    mv = client.get_model_version(model, version)
    run = client.get_run(mv.run_id)
    uri = run.data.tags.get(tracking.TAG_REFERENCE)
    if not uri:
        raise ReferenceMissingError(
            f"{model} v{version} has no reference sample (tag {tracking.TAG_REFERENCE})"
        )
    root = lake.uri("")
    if uri.startswith(root):
        return pd.read_parquet(io.BytesIO(lake.read_bytes(uri[len(root) :].lstrip("/"))))
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        return pd.read_parquet(fh)


class ReferenceMissingError(LookupError):
    """The served version carries no reference sample: drift cannot be judged."""


def golden_metrics(lake: Lake, model: str, versions: list[str]) -> dict[str, dict[str, float]]:
    """Golden-set figures of each version, from its evaluation report (when it was evaluated)."""
    out = {}
    for version in versions:
        path = locations.evaluation_report_json(model, version)
        if lake.exists(path):
            evaluation = json.loads(lake.read_bytes(path))["evaluation"]["challenger"]
            out[version] = {k: evaluation.get(k) for k in ("roc_auc", "log_loss", "brier", "ece")}
    return out


# --------------------------------------------------------------------------------------
# MLflow monitoring run (one per model and day)
# --------------------------------------------------------------------------------------
def monitoring_run(
    model: str, day: str, cfg: PipelineConfig, version: str | None, context=None
) -> tuple[str, str]:
    """The day's monitoring run (created once; a rerun finds it by tag). Returns (run id, experiment id)."""
    from mlpipeline.training import tracking

    client = _client()
    name = f"{cfg.training.experiment}-monitoring"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TAG_DAY} = '{day}' and tags.{TAG_MODEL} = '{model}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(
            experiment_id,
            run_name=f"monitoring {model} {day}",
            tags={tracking.TAG_ROLE: "monitoring", TAG_DAY: day, TAG_MODEL: model},
        )
        run_id = run.info.run_id
    tags = {TAG_VERSION: version or "", **tracking.airflow_tags(context)}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id, experiment_id


def _finish_run(run_id: str) -> None:
    client = _client()
    if client.get_run(run_id).info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------
def check_traffic(log_frame: pd.DataFrame, day: str, min_rows: int) -> Finding:
    figures = {"rows": len(log_frame)}
    if log_frame.empty:
        return Finding("traffic", BREACH, f"no predictions logged on {day}", figures, {"min_rows": min_rows})
    missing = missing_columns(log_frame, ("model_version", "score"))
    if missing:
        return Finding(
            "traffic", BREACH, f"prediction log of {day} lacks column(s) {', '.join(missing)}", figures
        )
    figures["versions"] = log_frame["model_version"].astype(str).value_counts().to_dict()
    version = dominant_version(log_frame)
    if len(log_frame) < min_rows:
        return Finding(
            "traffic", WARN, f"only {len(log_frame)} predictions logged on {day} (< {min_rows}): drift not judged",
            figures, {"min_rows": min_rows}, version=version,
        )  # fmt: skip
    return Finding("traffic", OK, f"{len(log_frame)} predictions on {day}", figures, version=version)


def run_drift_check(
    day: dt.date | str, context=None, lake: Lake | None = None, cfg: PipelineConfig | None = None
) -> dict[str, Any]:
    """Drift of day D's traffic vs the served version's reference; report to the lake and MLflow."""
    from mlpipeline.monitoring.drift import PREDICTION, DriftInputError, check_drift
    from mlpipeline.training import tracking

    day = _iso(day)
    lake = lake or Lake.from_settings()
    cfg = cfg or get_pipeline_config()
    mcfg, model = cfg.monitoring, cfg.training.model_name
    traffic_frame = read_traffic(lake, day)
    traffic = check_traffic(traffic_frame, day, mcfg.min_rows)
    out: dict[str, Any] = {"traffic": traffic.as_dict()}
    if traffic.status != OK:
        out["drift"] = Finding("drift", SKIPPED, f"drift not judged: {traffic.summary}").as_dict()
        return out
    version = traffic.version
    try:
        reference = read_reference(lake, model, version)
    except ReferenceMissingError as err:
        out["drift"] = Finding("drift", UNAVAILABLE, str(err), version=version).as_dict()
        return out
    features, categorical = _served_features(lake, model, version, reference)
    window = read_window(lake, day, mcfg.drift_window_days)
    served = window[window["model_version"].astype(str) == version]
    current = served.rename(columns={"score": PREDICTION})
    try:
        result, snapshot = check_drift(current, reference, features, categorical, mcfg)
    except DriftInputError as err:
        out["drift"] = Finding("drift", UNAVAILABLE, str(err), version=version).as_dict()
        return out
    figures = {
        "share": result.share,
        "drifted": result.drifted,
        "failed": {c.column: c.error for c in result.columns if c.error},
        "columns": {c.column: c.score for c in result.judged},
        "rows": result.rows,
        "tested_rows": result.tested_rows,
        "reference_rows": result.reference_rows,
        "sample_error_bound": result.sample_error_bound,
        "ignored": result.ignored,
        "window_days": mcfg.drift_window_days,
        "window_days_with_traffic": int(window["dt"].nunique()) if "dt" in window.columns else None,
    }
    thresholds = {
        "drift_share_threshold": mcfg.drift_share_threshold,
        "columns": {c.column: c.threshold for c in result.columns},
    }
    if result.dataset_drift:
        status = BREACH
        summary = (
            f"{len(result.drifted)} of {len(result.judged)} columns drifted ({result.share:.0%} >= "
            f"{mcfg.drift_share_threshold:.0%}): {', '.join(result.drifted)}"
        )
    elif result.drifted:
        status = WARN
        summary = (
            f"column drift below the retraining share ({result.share:.0%} < {mcfg.drift_share_threshold:.0%}): "
            + ", ".join(f"{c} ({figures['columns'][c]:.2f})" for c in result.drifted)
        )
    else:
        status = OK
        summary = f"no drift in {len(result.judged)} columns (largest share {result.share:.0%})"
    if result.failed:
        summary += f"; not judged: {', '.join(f'{c} ({e})' for c, e in figures['failed'].items())}"
        status = WARN if status == OK else status
    drift = Finding("drift", status, summary, figures, thresholds, result.drifted, version)
    out["golden"] = golden_staleness(lake, cfg, window, features, categorical, day).as_dict()

    run_id, experiment_id = monitoring_run(model, day, cfg, version, context)
    base = drift_dir(model, day)
    report = {"model": model, "version": version, "day": day, **result.as_dict()}
    html_name = "report.html"
    if snapshot is not None:
        with tempfile.TemporaryDirectory(prefix="mlp-drift-") as tmp:
            html_path = Path(tmp) / "drift_report.html"
            snapshot.save_html(str(html_path))
            (Path(tmp) / "drift_report.json").write_text(json.dumps(report, indent=2, default=str))
            (Path(tmp) / "evidently.json").write_text(snapshot.json())
            lake.write_bytes(f"{base}/{html_name}", html_path.read_bytes())
            lake.write_bytes(f"{base}/evidently.json", (Path(tmp) / "evidently.json").read_bytes())
            _client().log_artifacts(run_id, tmp, artifact_path="drift")
    lake.write_json(f"{base}/report.json", report)
    client = _client()
    client.log_metric(run_id, "drift_share", result.share)
    client.log_metric(run_id, "drifted_columns", len(result.drifted))
    for column in result.judged:
        client.log_metric(run_id, f"drift_{column.column}", float(column.score))
    drift.figures["report_path"] = lake.uri(f"{base}/{html_name}")
    out["drift"] = drift.as_dict()
    out["report_url"] = (
        f"{tracking.run_url(run_id, experiment_id)}/artifacts/drift/drift_report.html" if snapshot else None
    )
    out["mlflow_run_url"] = tracking.run_url(run_id, experiment_id)
    return out


def golden_staleness(lake: Lake, cfg: PipelineConfig, window, features, categorical, day: str) -> Finding:
    """The golden set against the trailing week's traffic (:mod:`mlpipeline.monitoring.golden`)."""
    from mlpipeline.monitoring import golden
    from mlpipeline.settings import get_settings

    in_use = golden.windows_in_use(_client(), cfg.training.model_name)
    return golden.staleness_finding(
        lake, cfg, window, features, categorical, day, in_use, get_settings().data_start
    )


def _served_features(lake: Lake, model: str, version: str, reference) -> tuple[list[str], list[str]]:
    """Feature names and categorical ones of the served version (its export, else the reference)."""
    from mlpipeline.serving.location import ServedSpecError, served_spec

    try:
        spec = served_spec(lake, model, version)
        return list(spec.features), [f for f in spec.features if spec.is_categorical(f)]
    except ServedSpecError as err:
        log.warning("%s; taking the features from the reference sample", err)
    features = [c for c in reference.columns if c not in ("prediction", "is_delayed", "flight_date")]
    categorical = [c for c in features if not _is_numeric(reference[c])]
    return features, categorical


def _is_numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series)


def run_quality_check(
    day: dt.date | str, lake: Lake | None = None, cfg: PipelineConfig | None = None
) -> dict[str, Any]:
    """Quality of what was served on D - labels_delay_days, now that its labels landed."""
    lake = lake or Lake.from_settings()
    cfg = cfg or get_pipeline_config()
    mcfg, model = cfg.monitoring, cfg.training.model_name
    labels_day = (dt.date.fromisoformat(_iso(day)) - dt.timedelta(days=mcfg.labels_delay_days)).isoformat()
    labels = read_labels(lake, labels_day)
    served = read_traffic(lake, labels_day) if labels is not None else None
    versions = (
        sorted(served["model_version"].astype(str).unique())
        if served is not None and "model_version" in served.columns
        else []
    )
    replaced = replaced_champions(lake, model)
    wanted = sorted({*versions, *(replaced[v] for v in versions if replaced.get(v))})
    finding = quality_on_labels(
        served if served is not None else _empty(),
        labels,
        golden_metrics(lake, model, wanted),
        mcfg,
        labels_day,
        replaced=replaced,
    )
    return finding.as_dict()


def replaced_champions(lake: Lake, model: str) -> dict[str, str]:
    """Version -> the champion its latest promotion replaced (from the audit trail)."""
    from mlpipeline.deployment import registry

    out = {}
    for record in registry.read_history(lake, model):
        if record.get("action") == "promote" and record.get("from_version"):
            out[str(record["to_version"])] = str(record["from_version"])
    return out


def _empty():
    import pandas as pd

    return pd.DataFrame()


def run_serving_checks(
    day: dt.date | str, lake: Lake | None = None, cfg: PipelineConfig | None = None
) -> dict[str, Any]:
    """Engineering health (prediction log + /metrics) and consistency (/health vs registry)."""
    from mlpipeline.deployment import registry

    lake = lake or Lake.from_settings()
    cfg = cfg or get_pipeline_config()
    mcfg, model = cfg.monitoring, cfg.training.model_name
    server = scrape_server(get_settings().serving_url, mcfg.server_timeout_s)
    champion = registry.current_champion(_client(), model)
    traffic = read_traffic(lake, day)
    return {
        "engineering": engineering_health(traffic, server, mcfg, _iso(day)).as_dict(),
        "consistency": consistency(server, champion).as_dict(),
    }


# --------------------------------------------------------------------------------------
# Decision, record, alarms
# --------------------------------------------------------------------------------------
def _finding(data: dict[str, Any]) -> Finding:
    return Finding(**data)


def decide_and_record(
    day: dt.date | str,
    drift_out: dict[str, Any],
    quality: dict[str, Any],
    serving: dict[str, Any],
    context=None,
    lake: Lake | None = None,
    cfg: PipelineConfig | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Apply the rules, write the daily record (lake + MLflow run), raise the alarms."""
    from mlpipeline.deployment import registry

    day = _iso(day)
    lake = lake or Lake.from_settings()
    cfg = cfg or get_pipeline_config()
    model = cfg.training.model_name
    findings = [
        _finding(drift_out["traffic"]),
        _finding(drift_out["drift"]),
        _finding(quality),
        _finding(serving["engineering"]),
        _finding(serving["consistency"]),
    ]
    if drift_out.get("golden"):
        stale = _finding(drift_out["golden"])
        # The champion's gap between its golden-set quality and what its delayed labels say.
        stale.figures.update({k: v for k, v in quality.get("figures", {}).items() if k.startswith("roc_auc")})
        findings.append(stale)
    champion = ChampionInfo.from_history(
        registry.current_champion(_client(), model), registry.read_history(lake, model)
    )
    decision: Decision = monitoring_decision(findings, champion, cfg.monitoring, model, day, now=now)
    source = (
        alarm_channels.source_of(context) if context else {"dag_id": None, "run_id": None, "task_id": None}
    )
    raised = []
    for alarm in decision.alarms:
        alarm = {**alarm, "report_url": drift_out.get("report_url"), "source": source}
        raised.append(alarm_channels.raise_alarm(alarm, lake=lake))
    record = {
        "model": model,
        "day": day,
        "decision": decision.action,
        "reasons": decision.reasons,
        "rollback_target": decision.rollback_target,
        "champion": asdict(champion),
        "findings": [f.as_dict() for f in findings],
        "alarms": [{k: a[k] for k in ("id", "what", "severity", "suggested_action")} for a in raised],
        "report_url": drift_out.get("report_url"),
        "source": source,
        "time": dt.datetime.now(dt.UTC).isoformat(),
    }
    lake.write_json(record_path(model, day), record)
    run_id, _ = monitoring_run(model, day, cfg, findings[0].version, context)
    client = _client()
    client.set_tag(run_id, "decision", decision.action)
    client.set_tag(run_id, "decision_reasons", "; ".join(decision.reasons)[:4900])
    for f in findings:
        client.set_tag(run_id, f"status_{f.check}", f.status)
    for key in ("roc_auc", "log_loss", "ece", "p99_ms", "error_rate", "memory_mb"):
        for f in findings:
            value = f.figures.get(key)
            if isinstance(value, (int, float)):
                client.log_metric(run_id, f"{f.check}_{key}", float(value))
    with tempfile.TemporaryDirectory(prefix="mlp-monitor-") as tmp:
        (Path(tmp) / "record.json").write_text(json.dumps(record, indent=2, default=str))
        client.log_artifacts(run_id, tmp, artifact_path="monitoring")
    _finish_run(run_id)
    from mlpipeline.monitoring.golden import refresh_conf

    golden_finding = next((f.as_dict() for f in findings if f.check == "golden"), None)
    return {
        "decision": decision.action,
        "reasons": decision.reasons,
        "rollback_target": decision.rollback_target,
        "champion": champion.version,
        "alarms": len(raised),
        "record": lake.uri(record_path(model, day)),
        "golden_refresh_conf": refresh_conf(golden_finding, cfg, day),
    }


def rollback_conf(decided: dict[str, Any], day: str) -> dict[str, Any]:
    """``conf`` of the ``model_rollback`` run monitoring triggers."""
    reasons = "; ".join(decided["reasons"])
    return {
        "target_version": str(decided["rollback_target"]) if decided.get("rollback_target") else None,
        "reason": f"model_monitoring {day}: {reasons}"[:1000],
        "dry_run": False,
        "requested_by": "model_monitoring",
    }


def retrain_conf(decided: dict[str, Any], day: str) -> dict[str, Any]:
    return {
        "version_day": day,  # dataset_generation builds this version (not the trigger time's)
        "requested_by": "model_monitoring",
        "reason": f"drift on {day}: {'; '.join(decided['reasons'])}"[:1000],
    }


def no_traffic_alarm(day: str, reason: str, context=None) -> dict[str, Any]:
    cfg = get_pipeline_config()
    return alarm_channels.raise_alarm(
        {
            "what": f"traffic: no traffic logged for {day}: {reason}",
            "check": "traffic",
            "severity": "critical",
            "model": cfg.training.model_name,
            "version": None,
            "figures": {"day": day},
            "thresholds": {"sensor_timeout_s": cfg.monitoring.sensor_timeout_s},
            "suggested_action": "check that the model server is up and receives traffic, and that its prediction log reaches the lake",
            "source": alarm_channels.source_of(context) if context else {},
        }
    )


__all__ = ["BREACH", "OK", "SKIPPED", "UNAVAILABLE"]
