"""
# golden_dataset

Builds the **frozen evaluation set** that every challenger and champion is compared on.

* **Schedule**: manual (*Trigger* with the form): `start` and `end` (the days it covers),
  `sample_size` (rows kept, a seeded deterministic sample), `version` (a new name; empty: the
  next free one, `v1`, `v2`, …).
* **Flow**: `check_version` (refuses a version that already exists, before any work) →
  `wait_for_raw` → `prepare` → `build_dataset` (the same Spark job as training datasets) →
  `quality_gate` (the same suite) → `publish` (`golden/<name>/<version>/` with a manifest
  and content hash; never overwritten).
* **Leakage**: training refuses any dataset whose window overlaps the current golden range;
  every training manifest records the golden version and whether it overlaps.
* **Produces**: Asset `golden_dataset`.
* **Triage**: "already exists" → pick a new version name; other failures as in
  `dataset_generation`.
"""

from __future__ import annotations

import datetime as dt
import sys

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task
from mlpipeline_airflow.sensors import LakePartitionsSensor

from mlpipeline.assets import GOLDEN_DATASET
from mlpipeline.config import get_settings
from mlpipeline.dag_defaults import DEFAULT_ARGS, fail_without_retry, run_deadline
from mlpipeline.data.datasets import JOB_SCRIPT
from mlpipeline.pipeline_config import get_pipeline_config

GOLDEN = get_pipeline_config().golden


def _golden_partitions(context) -> list[str]:
    from mlpipeline.data.generation import required_partitions

    params = context["params"]
    start, end = dt.date.fromisoformat(params["start"]), dt.date.fromisoformat(params["end"])
    if start > end:
        raise ValueError(f"golden range start {start} is after end {end}")
    return required_partitions(start, end)


@dag(
    dag_id="golden_dataset",
    schedule=None,
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=2),
    tags=["mlpipeline", "datasets", "golden", "spark"],
    doc_md=__doc__,
    params={
        "start": Param(
            GOLDEN.default_start.isoformat(),
            type="string",
            format="date",
            title="First day",
            description="First day the golden set covers (landed raw days). Training windows may not overlap it.",
        ),
        "end": Param(
            GOLDEN.default_end.isoformat(),
            type="string",
            format="date",
            title="Last day",
            description="Last day the golden set covers (inclusive).",
        ),
        "sample_size": Param(
            GOLDEN.default_sample_size,
            type="integer",
            minimum=100,
            title="Rows kept",
            description="Rows kept, a seeded deterministic sample of the range.",
        ),
        "version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[A-Za-z0-9._-]+$",
            title="New version name",
            description="Empty: the next free name (v1, v2, …). An existing version is refused: golden sets are frozen.",
        ),
    },
)
def golden_dataset():
    @task
    def check_version(params=None) -> str:
        """Refuse an existing version before any work (golden sets are frozen); empty: the next free one."""
        from airflow.sdk.exceptions import AirflowFailException

        from mlpipeline.data.datasets import golden_dir, next_golden_version
        from mlpipeline.lake import Lake

        lake = Lake.from_settings()
        version = (params.get("version") or "").strip() or next_golden_version(lake, GOLDEN.name)
        directory = golden_dir(GOLDEN.name, version)
        if lake.is_committed(directory):
            raise AirflowFailException(
                f"golden version {GOLDEN.name}/{version} already exists at {lake.uri(directory)}; "
                "golden sets are frozen: choose a new version name (or leave it empty for the next free one)"
            )
        return version

    wait_for_raw = LakePartitionsSensor(
        task_id="wait_for_raw",
        directories=_golden_partitions,
        what="raw partitions",
        poke_interval=30,
        timeout=600,
    )

    @task
    def prepare(version: str, params=None) -> dict:
        """Stage the range's raw inputs and check them before Spark starts."""
        from mlpipeline.data import generation

        with fail_without_retry(generation.BadInputError):
            plan = generation.prepare(
                "golden",
                GOLDEN.name,
                version,
                dt.date.fromisoformat(params["start"]),
                dt.date.fromisoformat(params["end"]),
            )
        return plan.as_dict() | {"job_args": plan.job_args()}

    version = check_version()
    plan = prepare(version)

    build_dataset = SparkSubmitOperator(
        task_id="build_dataset",
        application=str(JOB_SCRIPT),
        application_args=plan["job_args"],
        conn_id=get_settings().spark_conn_id,
        name="build_golden_{{ ti.xcom_pull(task_ids='check_version') }}",
        conf={"spark.pyspark.python": sys.executable, "spark.ui.showConsoleProgress": "false"},
        execution_timeout=dt.timedelta(hours=1),
    )

    @task
    def quality_gate(plan: dict) -> dict:
        """The same Great Expectations gate as training datasets."""
        from mlpipeline.data import generation

        with fail_without_retry(generation.QualityGateError):
            return generation.gate(generation.BuildPlan.from_dict(_plan_fields(plan)))

    @task(outlets=[GOLDEN_DATASET])
    def publish(plan: dict, quality: dict, params=None, dag_run=None, outlet_events=None) -> dict:
        """Sample and publish the frozen set (an existing version is refused)."""
        from mlpipeline.data import generation

        manifest = generation.publish_golden(
            generation.BuildPlan.from_dict(_plan_fields(plan)),
            quality,
            sample_size=int(params["sample_size"]),
            run={"dag_id": dag_run.dag_id, "run_id": dag_run.run_id},
        )
        extra = generation.asset_extra(manifest)
        outlet_events[GOLDEN_DATASET].extra = extra
        return extra

    gate = quality_gate(plan)
    version >> wait_for_raw >> plan >> build_dataset >> gate
    publish(plan, gate)


def _plan_fields(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k != "job_args"}


golden_dataset()
