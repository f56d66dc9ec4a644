"""
# golden_dataset

Builds the **frozen evaluation set** that every challenger and champion is compared on.

* **Schedule**: manual (*Trigger* with the form): `start` and `end` (the days it covers),
  `sample_size` (rows kept, a seeded deterministic sample), `version` (a new name; empty: the
  next free one, `v1`, `v2`, …).
* **Flow**: `check_version` (refuses a version that already exists, before any work) →
  `wait_for_raw` → `prepare` → `build_dataset` (the same Spark job as training datasets) →
  `quality_gate` (the same suite; these four are the task group `build` of
  `plugins/mlpipeline_airflow/dataset_build.py`, shared with `dataset_generation`) → `publish` (`golden/<name>/<version>/` with a manifest
  and content hash; never overwritten).
* **Leakage**: training refuses any dataset whose window overlaps the current golden range;
  every training manifest records the golden version and whether it overlaps.
* **Produces**: Asset `golden_dataset`.
* **Triage**: "already exists" → pick a new version name; other failures as in
  `dataset_generation`.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task
from mlpipeline_airflow.dataset_build import DatasetBuild, build_dataset_group, plan_from_xcom

from mlpipeline.assets import GOLDEN_DATASET
from mlpipeline.dag_defaults import DEFAULT_ARGS, run_deadline
from mlpipeline.pipeline_config import get_pipeline_config

GOLDEN = get_pipeline_config().golden


def _golden_partitions(context) -> list[str]:
    from mlpipeline.data.steps import required_partitions

    params = context["params"]
    start, end = dt.date.fromisoformat(params["start"]), dt.date.fromisoformat(params["end"])
    if start > end:
        raise ValueError(f"golden range start {start} is after end {end}")
    return required_partitions(start, end)


def _plan(context):
    from mlpipeline.data import steps as data_steps

    params = context["params"]
    return data_steps.prepare(
        "golden",
        GOLDEN.name,
        context["ti"].xcom_pull(task_ids="check_version"),  # the form's version, or the next free one
        dt.date.fromisoformat(params["start"]),
        dt.date.fromisoformat(params["end"]),
    )


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

    group, plan, gate = build_dataset_group(
        DatasetBuild(
            partitions=_golden_partitions,
            plan=_plan,
            plan_errors=("BadInputError",),
            spark_name="build_golden_{{ ti.xcom_pull(task_ids='check_version') }}",
            prepare_doc="Stage the range's raw inputs and check them before Spark starts.",
            gate_doc="The same Great Expectations gate as training datasets.",
            sensor={"poke_interval": 30, "timeout": 600},
        )
    )

    @task(outlets=[GOLDEN_DATASET])
    def publish(plan: dict, quality: dict, params=None, dag_run=None, outlet_events=None) -> dict:
        """Sample and publish the frozen set (an existing version is refused)."""
        from mlpipeline.data import steps as data_steps

        manifest = data_steps.publish_golden(
            plan_from_xcom(plan),
            quality,
            sample_size=int(params["sample_size"]),
            run={"dag_id": dag_run.dag_id, "run_id": dag_run.run_id},
        )
        extra = data_steps.asset_extra(manifest)
        outlet_events[GOLDEN_DATASET].extra = extra
        return extra

    check_version() >> group
    publish(plan, gate)


golden_dataset()
