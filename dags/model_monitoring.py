"""
# model_monitoring

Every day of traffic, the on-call engineer's checklist, automated: **are the inputs still like
the training data, is the model still accurate now that outcomes are known, is the server
fast and healthy, and does it serve what the registry says?** Then one decision.

* **Schedule**: daily, data interval = one day `[D, D+1)`, from `MLP_DATA_START` to
  `MLP_DATA_END`; `catchup=False`: **backfill** days from the UI (*Trigger → Backfill*) after
  their traffic was served (`traffic_replay` in the demo).
* **Flow**: `wait_for_traffic` (sensor, reschedule mode, on `serving/predictions/dt=D/`; on
  timeout alarm "no traffic logged") → three checks in parallel:
  * `check_drift`: Evidently 0.7 (`DataDriftPreset`) of D's inputs and scores against the
    served version's reference sample; HTML + JSON under `reports/drift/<model>/dt=D/` and
    on the day's MLflow monitoring run (button **Report** on the task);
  * `check_quality`: ROC AUC / log loss / calibration of what was served on
    D − `labels_delay_days`, joined with its delayed labels, against the version's golden-set
    figures (skipped with a note when the labels have not landed);
  * `check_serving`: p50/p95/p99 latency from the prediction log, error rate and memory from
    the server's `/metrics`, and `/health`'s version vs the registry's `champion` (server
    down = an alarm, not a failed task);
  → `decide` (rules in `mlpipeline/monitoring/decide.py`; writes the daily record
  `monitoring/<model>/dt=D/record.json` and the MLflow run; raises the alarms) →
  `choose_action` (branch) → one of:
  * `healthy`: nothing to do;
  * `trigger_retraining`: inputs drifted → `dataset_generation` with `conf`
    `{"version_day": D}` (run id `retrain__D`), whose `training_dataset` asset event trains
    a new challenger;
  * `trigger_rollback`: the champion breached quality/engineering within
    `rollback_window_days` of its promotion → `model_rollback` with `conf` naming the previous
    champion and the reason (run id `auto_rollback__D`);
  * `alarm_only`: a breach with no safe automatic action (alarms already raised).

  Beside the branch, `golden_refresh_needed` → `trigger_golden_refresh`: `check_drift` also
  judges the **golden set's staleness** (the trailing week's traffic against it, same
  thresholds); stale = an alarm with the figures and, with `golden.refresh_on_stale`, a
  `golden_dataset` run (run id `golden_refresh__D`) building the next version from the newest
  labelled days no training window in use overlaps. It never moves production.
* **Thresholds**: `monitoring` in `include/config/pipeline.yaml` (commented).
* **Alarms**: `alarms/alarms.jsonl` in the lake + task log; Slack and e-mail when the
  connections `slack_alarms` / `smtp_alarms` exist (`MLP_ALARM_*`).
* **Triage**: open `decide`'s log (every finding with its figures) or the record; the drift
  report shows each column's distributions. Reruns overwrite the day's outputs; a retrain or
  rollback is triggered at most once per day (fixed run ids).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronDataIntervalTimetable, dag, task
from mlpipeline_airflow.sensors import LakePartitionsSensor

from mlpipeline import locations
from mlpipeline.dag_defaults import DEFAULT_ARGS, data_end, data_start, run_deadline
from mlpipeline.pipeline_config import get_pipeline_config

MONITORING = get_pipeline_config().monitoring


def _traffic_partition(context) -> list[str]:
    return [locations.predictions_dir(context["data_interval_start"].date())]


def _no_traffic(context, reason: str) -> None:
    from mlpipeline.monitoring.steps import no_traffic_alarm

    no_traffic_alarm(context["data_interval_start"].date().isoformat(), reason, context)


@dag(
    dag_id="model_monitoring",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=data_start(),
    end_date=data_end(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=MONITORING.sensor_timeout_s / 3600 + 1),
    tags=["mlpipeline", "monitoring", "alarms"],
    doc_md=__doc__,
)
def model_monitoring():
    wait_for_traffic = LakePartitionsSensor(
        task_id="wait_for_traffic",
        directories=_traffic_partition,
        what="prediction-log partitions",
        committed=False,
        on_timeout=_no_traffic,
        poke_interval=MONITORING.sensor_poke_interval_s,
        timeout=MONITORING.sensor_timeout_s,
    )

    @task
    def check_drift(data_interval_start=None) -> dict:
        """Evidently drift of day D's inputs and scores vs the served version's reference."""
        from airflow.sdk import get_current_context
        from mlpipeline_airflow.links import MLFLOW_RUN_URL_KEY, REPORT_URL_KEY, push_link

        from mlpipeline.monitoring import steps

        context = get_current_context()
        out = steps.run_drift_check(data_interval_start.date(), context)
        if out.get("report_url"):
            push_link(context, REPORT_URL_KEY, out["report_url"])
        if out.get("mlflow_run_url"):
            push_link(context, MLFLOW_RUN_URL_KEY, out["mlflow_run_url"])
        return out

    @task
    def check_quality(data_interval_start=None) -> dict:
        """Served quality on the delayed labels of D - labels_delay_days."""
        from mlpipeline.monitoring import steps

        return steps.run_quality_check(data_interval_start.date())

    @task
    def check_serving(data_interval_start=None) -> dict:
        """Latency, errors, memory; served version vs the registry's champion."""
        from mlpipeline.monitoring import steps

        return steps.run_serving_checks(data_interval_start.date())

    @task
    def decide(drift: dict, quality: dict, serving: dict, data_interval_start=None) -> dict:
        """Apply the rules; write the daily record and MLflow run; raise the alarms."""
        from airflow.sdk import get_current_context

        from mlpipeline.monitoring import steps

        day = data_interval_start.date().isoformat()
        decided = steps.decide_and_record(day, drift, quality, serving, get_current_context())
        return {
            **decided,
            "rollback_conf": steps.rollback_conf(decided, day),
            "retrain_conf": steps.retrain_conf(decided, day),
        }

    @task.branch
    def choose_action(decided: dict) -> str:
        """healthy | trigger_retraining | trigger_rollback | alarm_only."""
        return {
            "healthy": "healthy",
            "retrain": "trigger_retraining",
            "rollback": "trigger_rollback",
            "alarm_only": "alarm_only",
        }[decided["decision"]]

    checks = [check_drift(), check_quality(), check_serving()]
    wait_for_traffic >> checks
    decided = decide(*checks)
    branch = choose_action(decided)
    healthy = EmptyOperator(task_id="healthy")
    alarm_only = EmptyOperator(task_id="alarm_only")
    trigger_retraining = TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id="dataset_generation",
        trigger_run_id="retrain__{{ data_interval_start | ds }}",
        # Inside dataset_generation's [start_date, end_date] (a run dated after end_date gets no
        # task instances); the version itself comes from conf["version_day"].
        logical_date="{{ data_interval_end }}",
        conf=decided["retrain_conf"],
        skip_when_already_exists=True,
        execution_timeout=dt.timedelta(minutes=5),
    )
    trigger_rollback = TriggerDagRunOperator(
        task_id="trigger_rollback",
        trigger_dag_id="model_rollback",
        trigger_run_id="auto_rollback__{{ data_interval_start | ds }}",
        conf=decided["rollback_conf"],
        skip_when_already_exists=True,
        fail_when_dag_is_paused=True,  # a paused model_rollback would queue the rollback forever: fail + alarm
        execution_timeout=dt.timedelta(minutes=5),
    )
    branch >> [healthy, trigger_retraining, trigger_rollback, alarm_only]

    @task.short_circuit
    def golden_refresh_needed(decided: dict) -> bool:
        """The golden set is stale and golden.refresh_on_stale is on."""
        return decided.get("golden_refresh_conf") is not None

    trigger_golden_refresh = TriggerDagRunOperator(
        task_id="trigger_golden_refresh",
        trigger_dag_id="golden_dataset",
        trigger_run_id="golden_refresh__{{ data_interval_start | ds }}",
        conf=decided["golden_refresh_conf"],
        skip_when_already_exists=True,
        execution_timeout=dt.timedelta(minutes=5),
    )
    golden_refresh_needed(decided) >> trigger_golden_refresh


model_monitoring()
