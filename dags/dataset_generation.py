"""
# dataset_generation

Turns the landed raw tables into a **validated, versioned training dataset**, or refuses to
publish and says exactly why.

* **Schedule**: daily, data interval = one day; the version `ds=D` is built from the
  trailing window of `dataset.window_days` days ending at `D` (`include/config/pipeline.yaml`).
  `catchup=False`; the first version is the first day with a full window. Backfill any range
  from the UI (*Trigger → Backfill*) or `airflow backfill create --dag-id dataset_generation
  --from-date 2013-01-28 --to-date 2013-02-01`: a backfilled run rewrites its own version only.
* **Flow**: `wait_for_raw` (sensor, reschedule mode; on timeout it lists the partitions still
  missing) → `prepare` (stages inputs, checks markers and schemas before Spark starts) →
  `build_dataset` (`SparkSubmitOperator`, `spark_jobs/build_dataset.py`, master from the
  `spark_default` connection) → `quality_gate` (Great Expectations; on failure the staged
  data goes to `quarantine/` with the result, nothing is published) → `publish` (atomic:
  `_SUCCESS` with the manifest written last). The first four tasks are the task group
  `build` that `golden_dataset` shares (`plugins/mlpipeline_airflow/dataset_build.py`).
* **Produces**: Asset `training_dataset` (extra: version, window, rows, label rate, content
  hash, path, golden version and whether the window overlaps it).
* **Needs**: connection `spark_default`; `MLP_LAKE_URI` (+ `aws_default` for `s3://`).
* **Triage**: the failing task's log names the reason: missing partitions (sensor), bad raw
  input (prepare), failed expectations with observed values (quality_gate; details in
  `reports/quality/<name>/<ds>/summary.md` and `quarantine/<name>/ds=<ds>/`). The summary groups
  the failed checks by class (schema, integrity, consistency, history) with observed vs expected
  and the action: re-land the day from upstream, or accept it on purpose (params `accept_days` +
  `override_reason`, recorded on the manifest and the model version). Reruns are safe.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from mlpipeline_airflow.dataset_build import DatasetBuild, build_dataset_group, plan_from_xcom

from mlpipeline.assets import TRAINING_DATASET
from mlpipeline.dag_defaults import DEFAULT_ARGS, data_end, data_start, run_deadline
from mlpipeline.pipeline_config import get_pipeline_config
from mlpipeline.settings import get_settings

DATASET = get_pipeline_config().dataset


def _version_day(context) -> dt.date:
    """The version this run builds: param ``version_day`` (a triggered retrain) or the interval's day."""
    wanted = str((context.get("params") or {}).get("version_day") or "").strip()
    if not wanted:
        return context["data_interval_start"].date()
    try:
        return dt.date.fromisoformat(wanted)
    except ValueError:
        raise ValueError(f"param version_day={wanted!r} is not a date (YYYY-MM-DD)") from None


def _window_partitions(context) -> list[str]:
    from mlpipeline.data.steps import required_partitions, training_window

    day = _version_day(context)
    start, end = training_window(day, get_pipeline_config(), get_settings())
    return required_partitions(start, end)


def _plan(context):
    from mlpipeline.data import steps as data_steps

    cfg = get_pipeline_config()
    day = _version_day(context)
    start, end = data_steps.training_window(day, cfg, get_settings())
    return data_steps.prepare("training", cfg.dataset.name, day.isoformat(), start, end)


def _record_missing(context, reason: str) -> None:
    from mlpipeline.data.datasets import quarantine
    from mlpipeline.lake import Lake

    quarantine(Lake.from_settings(), DATASET.name, _version_day(context), reason)


@dag(
    dag_id="dataset_generation",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=data_start().add(days=DATASET.window_days - 1),  # the first full window
    end_date=data_end(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=8),
    tags=["mlpipeline", "datasets", "spark"],
    doc_md=__doc__,
    params={
        "version_day": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Version day",
            description="Leave empty for a normal run or a backfill: each run builds the version of its own "
            "data interval. A date (YYYY-MM-DD) builds that day's version instead (what monitoring's "
            "retrain trigger does).",
        ),
        "accept_days": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "format": "date"},
            title="Accept days (override)",
            description="Leave empty normally. Raw days (YYYY-MM-DD) whose failed raw checks (integrity, "
            "consistency, history) are accepted on purpose: they become warnings. Needs override_reason; "
            "recorded on the dataset manifest (quality.override) and the model version (tag quality_override).",
        ),
        "override_reason": Param(
            None,
            type=["null", "string"],
            title="Override reason",
            description="Why the accepted days are fine (required with accept_days), e.g. a ticket.",
        ),
    },
)
def dataset_generation():
    _group, plan, gate = build_dataset_group(
        DatasetBuild(
            partitions=_window_partitions,
            plan=_plan,
            plan_errors=("BadInputError", "WindowError", "ValueError"),
            # From the plan, not {{ ds }}: a run triggered without a logical date (REST, a retrain) has none.
            spark_name="build_dataset_{{ ti.xcom_pull(task_ids='prepare')['version'] }}",
            prepare_doc="Stage the window's raw inputs and check them before Spark starts.",
            gate_doc="Great Expectations gate: fail closed, quarantine what fails.",
            sensor={
                "on_timeout": _record_missing,
                "poke_interval": DATASET.sensor_poke_interval_s,
                "timeout": DATASET.sensor_timeout_s,
            },
        )
    )

    @task(outlets=[TRAINING_DATASET])
    def publish(plan: dict, quality: dict, dag_run=None, outlet_events=None) -> dict:
        """Publish the version atomically and announce it."""
        from mlpipeline.data import steps as data_steps

        manifest = data_steps.publish_training(
            plan_from_xcom(plan), quality, run={"dag_id": dag_run.dag_id, "run_id": dag_run.run_id}
        )
        extra = data_steps.asset_extra(manifest)
        outlet_events[TRAINING_DATASET].extra = extra
        return extra

    publish(plan, gate)


dataset_generation()
