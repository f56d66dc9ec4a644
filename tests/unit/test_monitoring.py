"""Monitoring building blocks on real flights: drift, checks, decisions, alarms (Slack to a local receiver)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest
from serving_fixtures import CATEGORICAL, FEATURES, real_rows

from mlpipeline.lake import Lake
from mlpipeline.monitoring import alarms
from mlpipeline.monitoring.checks import (
    BREACH,
    OK,
    SKIPPED,
    UNAVAILABLE,
    Finding,
    consistency,
    engineering_health,
    parse_prometheus,
    quality_on_labels,
    scrape_server,
)
from mlpipeline.monitoring.decide import (
    ALARM_ONLY,
    HEALTHY,
    RETRAIN,
    ROLLBACK,
    ChampionInfo,
    monitoring_decision,
)
from mlpipeline.monitoring.drift import check_drift, dkw_bound
from mlpipeline.pipeline_config import MonitoringConfig, get_pipeline_config


@pytest.fixture
def cfg() -> MonitoringConfig:
    return get_pipeline_config().monitoring.model_copy(
        update={"min_labelled_rows": 50, "max_calibration_error": 0.5}
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    frame = real_rows(n=3000, seed=1)
    return frame.assign(prediction=0.2 + 0.01 * frame["sched_dep_hour"])


def _traffic(seed: int, n: int = 3000) -> pd.DataFrame:
    frame = real_rows(n=n, seed=seed)
    return frame.assign(prediction=0.2 + 0.01 * frame["sched_dep_hour"])


def test_no_drift_on_the_same_month(reference, cfg):
    result, snapshot = check_drift(_traffic(7), reference, FEATURES, CATEGORICAL, cfg)
    assert snapshot is not None
    assert result.drifted == []
    assert not result.dataset_drift
    assert set(result.ignored) == {"month", "day_of_week"}


def test_unit_change_is_detected(reference, cfg):
    km = _traffic(8).assign(distance=lambda f: f["distance"] * 1.609)
    result, _ = check_drift(km, reference, FEATURES, CATEGORICAL, cfg)
    assert "distance" in result.drifted
    assert result.dataset_drift


def test_a_bad_column_is_reported_and_the_rest_judged(reference, cfg):
    traffic = _traffic(9).drop(columns=["temp"]).assign(distance="n/a")
    result, snapshot = check_drift(traffic, reference, FEATURES, CATEGORICAL, cfg)
    failed = {c.column: c.error for c in result.columns if c.error}
    assert failed["temp"] == "missing from the prediction log"
    assert "no numeric values" in failed["distance"]
    assert snapshot is not None
    assert {c.column for c in result.judged} >= {"carrier", "dest", "prediction"}


def test_sampling_bound():
    assert dkw_bound(100_000) == pytest.approx(0.0043, abs=1e-4)


def test_quality_skips_without_labels_and_breaches_on_inverted_scores(cfg):
    served = real_rows(n=900, seed=3)
    log = served.assign(model_version="2", score=0.2 + 0.6 * served["is_delayed"], ts="t")
    assert quality_on_labels(log, None, {}, cfg, "2013-01-05").status == SKIPPED
    labels = served[["flight_key", "is_delayed"]]
    golden = {"1": {"roc_auc": 0.72, "log_loss": 0.45}, "2": {"roc_auc": 0.70, "log_loss": 0.46}}
    assert quality_on_labels(log, labels, golden, cfg, "2013-01-05").status == OK
    inverted = log.assign(score=0.8 - 0.6 * served["is_delayed"])
    finding = quality_on_labels(inverted, labels, golden, cfg, "2013-01-05", replaced={"2": "1"})
    assert finding.status == BREACH
    assert any("replaced champion" in b for b in finding.breaches)
    missing = quality_on_labels(log.drop(columns=["score"]), labels, golden, cfg, "2013-01-05")
    assert missing.status == UNAVAILABLE
    assert "score" in missing.summary


def test_replayed_predictions_and_unmatched_labels_are_counted_never_joined_twice(cfg):
    served = real_rows(n=900, seed=3)
    log = served.assign(model_version="2", score=0.2 + 0.6 * served["is_delayed"], ts="t1")
    golden = {"2": {"roc_auc": 0.70, "log_loss": 0.46}}
    clean = quality_on_labels(log, served[["flight_key", "is_delayed"]], golden, cfg, "2013-01-05")
    # A replayed day: the first 300 predictions logged again later (with other scores); labels of
    # 50 flights nobody asked about, and 20 labels landed twice.
    replayed = pd.concat([log, log.head(300).assign(score=0.5, ts="t2")], ignore_index=True)
    strangers = real_rows(n=50, seed=99)[["flight_key", "is_delayed"]].assign(
        flight_key=lambda f: "x" + f["flight_key"]
    )
    labels = pd.concat(
        [served[["flight_key", "is_delayed"]], strangers, served.head(20)[["flight_key", "is_delayed"]]]
    )
    finding = quality_on_labels(replayed, labels, golden, cfg, "2013-01-05")
    figures = finding.figures
    assert (figures["duplicate_predictions"], figures["duplicate_labels"], figures["labels_without_prediction"]) == (
        300, 20, 50,
    )  # fmt: skip
    assert figures["labelled_rows"] == clean.figures["labelled_rows"] == len(served)  # each flight once
    assert figures["roc_auc"] < clean.figures["roc_auc"]  # the replay's newer scores (0.5) count


def test_engineering_and_consistency_when_the_server_is_down(cfg):
    down = scrape_server("http://127.0.0.1:9", timeout_s=0.5)
    assert "unreachable" in down["error"]
    finding = engineering_health(pd.DataFrame({"latency_ms": [1.0, 2.0]}), down, cfg, "2013-01-05")
    assert finding.status == UNAVAILABLE
    assert consistency(down, "3").status == UNAVAILABLE


def test_engineering_budgets(cfg):
    metrics = parse_prometheus(
        'mlp_requests_total{status="200"} 90.0\nmlp_requests_total{status="422"} 10.0\n'
        "process_resident_memory_bytes 1.0e8\n# HELP x\nmlp_prediction_log_lost_rows 0.0\n"
    )
    server = {"health": {"version": "3"}, "metrics": metrics}
    finding = engineering_health(pd.DataFrame({"latency_ms": [1.0] * 99 + [500.0] * 2}), server, cfg, "d")
    assert finding.status == BREACH
    assert any("error rate" in b for b in finding.breaches)
    assert any("p99 latency" in b for b in finding.breaches)
    assert consistency(server, "4").status == BREACH
    assert consistency(server, "3").status == OK


def _f(check: str, status: str, version: str | None = "3") -> Finding:
    return Finding(check, status, f"{check} {status}", version=version)


def test_decision_rules(cfg):
    now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    fresh = ChampionInfo("3", "promote", "2026-01-09T00:00:00+00:00", "2")
    old = ChampionInfo("3", "promote", "2025-12-01T00:00:00+00:00", "2")
    first = ChampionInfo("3", "promote", "2026-01-09T00:00:00+00:00", None)
    ok = [_f("traffic", OK), _f("drift", OK), _f("quality", OK), _f("engineering", OK), _f("consistency", OK)]
    assert monitoring_decision(ok, fresh, cfg, "m", "d", now).action == HEALTHY
    bad = [*ok[:2], _f("quality", BREACH), *ok[3:]]
    rollback = monitoring_decision(bad, fresh, cfg, "m", "d", now)
    assert (rollback.action, rollback.rollback_target) == (ROLLBACK, "2")
    assert monitoring_decision(bad, old, cfg, "m", "d", now).action == ALARM_ONLY
    assert "no earlier champion" in " ".join(monitoring_decision(bad, first, cfg, "m", "d", now).reasons)
    drift = [ok[0], _f("drift", BREACH), *ok[2:]]
    assert monitoring_decision(drift, fresh, cfg, "m", "d", now).action == RETRAIN
    mismatch = [*ok[:4], _f("consistency", BREACH)]
    decided = monitoring_decision(mismatch, fresh, cfg, "m", "d", now)
    assert decided.action == ALARM_ONLY
    assert decided.alarms[0]["check"] == "consistency"
    other_version = [*ok[:2], _f("quality", BREACH, version="2"), *ok[3:]]
    assert monitoring_decision(other_version, fresh, cfg, "m", "d", now).action == ALARM_ONLY


class _Receiver(BaseHTTPRequestHandler):
    received: list = []  # noqa: RUF012

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_alarm_goes_to_file_and_slack_once(tmp_path, monkeypatch, settings_env):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/services/T0/B0/X"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_ALARMS", json.dumps({"conn_type": "slackwebhook", "password": url})
    )
    settings = settings_env(lake_uri=f"file://{tmp_path / 'lake'}")
    lake = Lake.from_settings(settings)
    alarm = {
        "what": "quality: ROC AUC 0.31 below 0.68",
        "check": "quality",
        "severity": "critical",
        "model": "flight_delay",
        "version": "7",
        "figures": {"roc_auc": 0.31},
        "thresholds": {"max_roc_auc_drop": 0.05},
        "report_url": "http://mlflow/report.html",
        "suggested_action": "automatic rollback to v6",
        "source": {"dag_id": "model_monitoring", "run_id": "r1", "task_id": "decide"},
    }
    sent = alarms.raise_alarm(alarm, lake=lake, settings=settings)
    assert sent["channels"] == ["log", "file", "slack"]
    alarms.raise_alarm(alarm, lake=lake, settings=settings)  # a retry: written once
    stored = alarms.read_alarms(lake)
    assert len(stored) == 1
    for key in (
        "id",
        "time",
        "what",
        "model",
        "version",
        "figures",
        "thresholds",
        "report_url",
        "suggested_action",
    ):
        assert key in stored[0], key
    path, payload = _Receiver.received[0]
    assert path == "/services/T0/B0/X"
    assert "ROC AUC 0.31" in payload["text"]
    assert "automatic rollback to v6" in payload["text"]
    server.shutdown()


def test_deadline_callback_raises_an_alarm(tmp_path, settings_env):
    import asyncio

    from mlpipeline_airflow.notifiers import deadline_missed

    settings = settings_env(lake_uri=f"file://{tmp_path / 'lake'}")
    context = {
        "dag_run": {
            "dag_id": "dataset_generation",
            "dag_run_id": "scheduled__2013-02-01",
            "state": "running",
        },
        "deadline": {"id": "x", "deadline_time": "2013-02-02 08:00:00+00:00"},
    }
    asyncio.run(deadline_missed(context=context))
    stored = alarms.read_alarms(Lake.from_settings(settings))
    assert stored[-1]["check"] == "deadline"
    assert "dataset_generation is late" in stored[-1]["what"]
