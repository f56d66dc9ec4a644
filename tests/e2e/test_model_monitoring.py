"""Monitoring scenarios on real data: a real model trained by the pipeline, the real model server
process, real replayed traffic and delayed labels, MLflow, and ``model_monitoring`` via dag.test().

The scenarios share one production history (in order): a healthy day; a bad deployment rolled
back automatically; the server serving another version than the registry; drift that triggers
retraining and yields a new challenger.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import httpx
import mlflow
import pendulum
import pytest
import yaml
from serving_env import model_server, module_settings, settings_environ
from training_helpers import TRAIN_VERSION, build_lake

from mlpipeline.data.landing import land_range
from mlpipeline.deployment import registry, steps
from mlpipeline.local import replay, scenarios
from mlpipeline.monitoring import alarms
from mlpipeline.settings import PROJECT_ROOT
from mlpipeline.training import steps as training_steps
from mlpipeline.training import tracking

pytestmark = pytest.mark.spark
MODEL = "flight_delay_monitor_test"
TOKEN = "monitor-test-token"


def _client():
    tracking.connect()
    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_server, airflow_db, spark_connect_server):
    """Real lake, a champion trained by the pipeline on Jan 1-10, the model server running."""
    root = tmp_path_factory.mktemp("monitoring")
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["dataset"].update({"window_days": 3, "sensor_poke_interval_s": 1, "sensor_timeout_s": 5})
    cfg["training"].update(
        {"model_name": MODEL, "n_trials": 3, "timeout_s": 120, "reference_sample_rows": 3000}
    )
    cfg["deployment"].update({"slice_min_rows": 150, "engineering_repeats": 200, "max_p99_latency_ms": 100.0})
    cfg["monitoring"].update(
        {"sensor_poke_interval_s": 1, "sensor_timeout_s": 3, "max_p99_latency_ms": 250.0}
    )
    cfg["golden"].update({"refresh_days": 2})  # a stale golden set is rebuilt from 2 landed days
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    port, values = module_settings(root, TOKEN, MLP_ALLOW_FORCE_PROMOTE="true")
    with settings_environ(values):
        from mlpipeline.pipeline_config import get_pipeline_config
        from mlpipeline.settings import get_settings

        lake = build_lake(
            root / "lake", get_settings(), get_pipeline_config(), spark_remote=spark_connect_server
        )
        land_range(lake, dt.date(2013, 1, 11), dt.date(2013, 1, 14))
        land_range(lake, dt.date(2013, 7, 11), dt.date(2013, 7, 16))  # refresh days, a window, the day after
        with model_server(root, port, MLP_SERVING_POLL_S="1", MLP_SERVING_LOG_FLUSH_S="0.5") as url:
            trained = training_steps.train_candidate(TRAIN_VERSION.isoformat(), n_trials=3)
            registered = training_steps.register_candidate(trained)
            evaluated = steps.evaluate_candidate({"model": MODEL, "version": str(registered["version"])})
            assert evaluated["decision"] == "promote", evaluated
            steps.promote(evaluated, actor="test:setup")
            yield {"lake": lake, "url": url, "root": root, "v1": str(registered["version"])}


def served(env) -> str:
    return httpx.get(f"{env['url']}/health", timeout=5).json()["version"]


def serve_day(env, day: dt.date) -> None:
    """Replay a real day's flights as traffic and wait until the prediction log holds them."""
    result = replay.replay_traffic(
        env["lake"], env["url"], day, rate_per_s=2000, batch_size=1, max_rejected_share=0.5
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        from mlpipeline.serving.prediction_log import read_day

        if len(read_day(env["lake"], day)) >= result.ok:
            return
        time.sleep(0.3)
    raise AssertionError(f"prediction log of {day} incomplete")


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retries = 0
    return bag


def monitor(day: dt.date):
    """One model_monitoring run for ``day`` (data interval [day, day+1)); states and decision."""
    bag = load_dag("model_monitoring")  # dag.test() also serializes its siblings (trigger targets)
    dag = bag.dags["model_monitoring"]
    run = dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, tz="UTC").add(days=1))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    decide = next(ti for ti in run.get_task_instances() if ti.task_id == "decide")
    decided = decide.xcom_pull(task_ids="decide") if states.get("decide") == "success" else None
    return run, states, decided


def triggered_runs(dag_id: str) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).all()
        return [(r.run_id, dict(r.conf or {}), r.logical_date) for r in runs]


def record(env, day: dt.date) -> dict:
    return env["lake"].read_json(f"monitoring/{MODEL}/dt={day.isoformat()}/record.json")


def test_healthy_day(env):
    serve_day(env, dt.date(2013, 1, 11))
    replay.land_labels(env["lake"], dt.date(2013, 1, 11))
    serve_day(env, dt.date(2013, 1, 13))
    run, states, decided = monitor(dt.date(2013, 1, 13))
    assert run.state == "success", states
    assert decided["decision"] == "healthy", json.dumps(
        record(env, dt.date(2013, 1, 13))["findings"], indent=1
    )
    assert states["healthy"] == "success"
    assert states["trigger_rollback"] == states["trigger_retraining"] == "skipped"
    rec = record(env, dt.date(2013, 1, 13))
    by_check = {f["check"]: f for f in rec["findings"]}
    assert by_check["quality"]["status"] == "ok"
    assert by_check["quality"]["figures"]["labels_day"] == "2013-01-11"
    assert by_check["consistency"]["status"] == "ok"
    assert by_check["drift"]["status"] in ("ok", "warn")
    html = env["lake"].read_bytes(f"reports/drift/{MODEL}/dt=2013-01-13/report.html")
    assert len(html) > 100_000  # Evidently's page: scripts + the data of every judged column
    assert b"sched_dep_hour" in html
    monitoring_runs = _client().search_runs(
        [
            _client()
            .get_experiment_by_name(
                f"{yaml.safe_load(open(os.environ['MLP_PIPELINE_CONFIG']))['training']['experiment']}-monitoring"
            )
            .experiment_id
        ],
        filter_string="tags.monitoring_day = '2013-01-13'",
    )
    assert len(monitoring_runs) == 1
    assert monitoring_runs[0].data.tags["decision"] == "healthy"
    # Idempotent: a rerun of the same day reuses the record and the MLflow run.
    run, states, decided = monitor(dt.date(2013, 1, 13))
    assert decided["decision"] == "healthy"


def test_bad_deployment_is_rolled_back_automatically(env):
    good = env["v1"]
    bad = scenarios.register_degraded_model()  # inverted labels, registered like a real model
    evaluated = steps.evaluate_candidate({"model": MODEL, "version": bad})
    assert evaluated["decision"] == "reject"  # the gate would have stopped it…
    steps.force_promote(MODEL, bad, reason="scenario: degraded model", actor="test:force")  # …bypassed
    assert served(env) == bad
    serve_day(env, dt.date(2013, 1, 12))
    replay.land_labels(env["lake"], dt.date(2013, 1, 12))
    serve_day(env, dt.date(2013, 1, 14))

    _run, states, decided = monitor(dt.date(2013, 1, 14))
    assert decided["decision"] == "rollback", json.dumps(
        record(env, dt.date(2013, 1, 14))["findings"][2], indent=1
    )
    assert decided["rollback_target"] == good
    assert states["trigger_rollback"] == "success", states
    triggered = [r for r in triggered_runs("model_rollback") if r[0] == "auto_rollback__2013-01-14"]
    assert triggered
    assert triggered[0][1]["target_version"] == good
    assert "ROC AUC" in triggered[0][1]["reason"] or "log loss" in triggered[0][1]["reason"]

    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:  # unpaused from creation: the scheduler would run it at once
        assert session.get(DagModel, "model_rollback").is_paused is False
    # The triggered model_rollback run (run here with the same conf) restores the champion.
    bag = load_dag("model_rollback")
    rollback = bag.dags["model_rollback"].test(run_conf=triggered[0][1])
    assert rollback.state == "success"
    assert _client().get_model_version_by_alias(MODEL, "champion").version == good
    assert served(env) == good
    moves = [
        (h["action"], h["from_version"], h["to_version"]) for h in registry.read_history(env["lake"], MODEL)
    ]
    assert moves[-2:] == [("promote", good, bad), ("rollback", bad, good)]
    history = registry.read_history(env["lake"], MODEL)
    assert "FORCED" in history[-2]["reasons"][0]
    assert history[-1]["reasons"][0].startswith("model_monitoring 2013-01-14")
    raised = [a for a in alarms.read_alarms(env["lake"]) if a["check"] == "quality" and a["version"] == bad]
    assert raised
    assert "automatic rollback" in raised[-1]["suggested_action"]
    for key in ("what", "model", "version", "figures", "thresholds", "report_url", "suggested_action"):
        assert key in raised[-1], key


def test_server_serving_another_version_raises_consistency_alarm(env):
    champion = _client().get_model_version_by_alias(MODEL, "champion").version
    other = next(
        v.version for v in _client().search_model_versions(f"name='{MODEL}'") if v.version != champion
    )
    # Stop polling from undoing it: point the server by hand at another version.
    response = httpx.post(f"{env['url']}/admin/reload", json={"version": other},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
    assert response.status_code == 200
    from mlpipeline.monitoring import steps as monitoring_steps

    serving = monitoring_steps.run_serving_checks(dt.date(2013, 1, 14))
    assert serving["consistency"]["status"] == "breach", serving
    assert f"serves v{other}" in serving["consistency"]["summary"]
    # The poller restores the pointer's version within seconds.
    deadline = time.monotonic() + 15
    while served(env) != str(champion) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served(env) == str(champion)


def test_drift_triggers_retraining_and_a_new_challenger(env):
    day = dt.date(2013, 7, 15)
    serve_day(env, day)
    _run, states, decided = monitor(day)
    rec = record(env, day)
    assert decided["decision"] == "retrain", json.dumps(rec, indent=1)[:4000]
    drift = next(f for f in rec["findings"] if f["check"] == "drift")
    assert "temp" in drift["figures"]["drifted"]
    assert states["trigger_retraining"] == "success", states
    triggered = [r for r in triggered_runs("dataset_generation") if r[0] == "retrain__2013-07-15"]
    assert triggered
    assert triggered[0][1]["requested_by"] == "model_monitoring"
    assert triggered[0][1]["version_day"] == "2013-07-15"

    # The triggered run builds the dataset for the newest day; its asset event starts training.
    bag = load_dag("dataset_generation")
    logical_date = pendulum.instance(triggered[0][2])  # as triggered: conf and logical date
    built = bag.dags["dataset_generation"].test(run_conf=triggered[0][1], logical_date=logical_date)
    assert {ti.task_id: str(ti.state) for ti in built.get_task_instances()}["publish"] == "success"
    assert built.state == "success"
    trained = bag.dags["model_training"].test(run_conf={"dataset_version": day.isoformat()})
    assert trained.state == "success"
    challenger = _client().get_model_version_by_alias(MODEL, "challenger")
    assert challenger.tags[tracking.TAG_DATASET_VERSION] == day.isoformat()


def test_a_stale_golden_set_alarms_and_is_refreshed_from_days_no_window_uses(env):
    """July traffic against the January golden set (the drift day above): a warning alarm with
    the figures, a golden_dataset run for the 2 days before the retrain window (07-11..12), which
    builds v2 (frozen, hashed); the champion did not move because of it."""
    from mlpipeline.data import datasets

    day = dt.date(2013, 7, 15)
    rec = record(env, day)
    golden = next(f for f in rec["findings"] if f["check"] == "golden")
    assert golden["status"] == "breach", golden
    assert "temp" in golden["breaches"]
    assert golden["figures"]["refresh"] == {"start": "2013-07-11", "end": "2013-07-12"}
    alarm = next(a for a in rec["alarms"] if a["what"].startswith("golden"))
    assert alarm["severity"] == "warning"
    assert "build the next golden version from 2013-07-11..2013-07-12" in alarm["suggested_action"]
    triggered = [r for r in triggered_runs("golden_dataset") if r[0] == "golden_refresh__2013-07-15"]
    assert triggered, triggered_runs("golden_dataset")
    conf = triggered[0][1]
    assert (conf["start"], conf["end"], conf["requested_by"]) == (
        "2013-07-11",
        "2013-07-12",
        "model_monitoring",
    )

    before = registry.current_champion(_client(), MODEL)
    built = load_dag("golden_dataset").dags["golden_dataset"].test(run_conf=conf)
    assert built.state == "success"
    info = datasets.current_golden(env["lake"], "flights_delay_golden")
    assert (info.version, info.start, info.end) == ("v2", dt.date(2013, 7, 11), dt.date(2013, 7, 12))
    assert datasets.load_golden(env["lake"], "flights_delay_golden", "v1", verify=True)  # v1 untouched
    assert registry.current_champion(_client(), MODEL) == before


def test_the_july_challenger_takes_over_and_the_next_day_is_healthy(env):
    """The loop closes: the July challenger (drift retrain above) is judged on the refreshed July
    golden set and promoted; 07-16's traffic, served by it, is healthy on every check."""
    challenger = _client().get_model_version_by_alias(MODEL, "challenger")
    run = (
        load_dag("model_deployment")
        .dags["model_deployment"]
        .test(run_conf={"candidate": {"model": MODEL, "version": challenger.version}})
    )
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    report = env["lake"].read_json(f"reports/evaluation/{MODEL}/v{challenger.version}/report.json")
    assert states["promote"] == "success", report["reasons"]
    assert report["evaluation"]["golden"]["version"] == "v2"  # judged on the refreshed golden set
    assert registry.current_champion(_client(), MODEL) == challenger.version
    deadline = time.monotonic() + 30
    while served(env) != challenger.version and time.monotonic() < deadline:
        time.sleep(0.5)

    day = dt.date(2013, 7, 16)
    serve_day(env, day)
    _run, states, decided = monitor(day)
    rec = record(env, day)
    assert decided["decision"] == "healthy", json.dumps(rec["findings"], indent=1)[:4000]
    # The refreshed golden set is fresh, or stale with nothing fresher allowed yet: no alarm either way.
    assert {f["check"]: f["status"] for f in rec["findings"]}["golden"] in ("ok", "warn")
    assert states["trigger_golden_refresh"] == "skipped"


def test_no_traffic_day_alarms(env):
    _run, states, _ = monitor(dt.date(2013, 1, 20))
    assert states["wait_for_traffic"] == "failed"
    assert any(a["check"] == "traffic" and "2013-01-20" in a["what"] for a in alarms.read_alarms(env["lake"]))
