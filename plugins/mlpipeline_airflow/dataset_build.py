"""One task group for the dataset DAGs: wait for partitions → prepare → Spark job → quality gate.

``dataset_generation`` and ``golden_dataset`` build through the same Spark job and the same
Great Expectations gate; only the window, the plan and what is published differ. The group
keeps the tasks' ids flat (``prefix_group_id=False``): ``wait_for_raw``, ``prepare``,
``build_dataset``, ``quality_gate``. Imports stay light at parse time.
"""

from __future__ import annotations

import builtins
import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import TaskGroup, task

from mlpipeline.dag_defaults import fail_without_retry
from mlpipeline.data.datasets import JOB_PY_FILES, JOB_SCRIPT
from mlpipeline.settings import get_settings
from mlpipeline_airflow.sensors import LakePartitionsSensor
from mlpipeline_airflow.spark_job import DatasetJobOperator


@dataclass(frozen=True)
class DatasetBuild:
    """What differs between the dataset DAGs' builds."""

    #: the raw partitions the build needs, from the task context
    partitions: Callable[[Any], list[str]]
    #: the BuildPlan of this run (``mlpipeline.data.steps.prepare``), from the task context
    plan: Callable[[Any], Any]
    #: deterministic errors of ``plan`` (failed without retry): names in ``mlpipeline.data.steps``
    #: or builtins (resolved in the task, so the DAG file does not import the module)
    plan_errors: tuple[str, ...]
    #: ``spark-submit --name`` (templated)
    spark_name: str
    prepare_doc: str
    gate_doc: str
    sensor: dict[str, Any] = field(default_factory=dict)


def plan_from_xcom(plan: dict):
    """The BuildPlan that ``prepare`` pushed (without its ``job_args``)."""
    from mlpipeline.data import steps as data_steps

    return data_steps.BuildPlan.from_dict({k: v for k, v in plan.items() if k != "job_args"})


def build_dataset_group(build: DatasetBuild, group_id: str = "build") -> tuple[TaskGroup, Any, Any]:
    """The group, the ``prepare`` output (the plan) and the ``quality_gate`` output (its report)."""
    with TaskGroup(group_id=group_id, prefix_group_id=False) as group:
        wait_for_raw = LakePartitionsSensor(
            task_id="wait_for_raw", directories=build.partitions, what="raw partitions", **build.sensor
        )

        @task(task_id="prepare", doc_md=build.prepare_doc)
        def prepare() -> dict:
            from airflow.sdk import get_current_context

            from mlpipeline.data import steps as data_steps

            errors = [
                getattr(data_steps, name, None) or getattr(builtins, name) for name in build.plan_errors
            ]
            with fail_without_retry(*errors):
                plan = build.plan(get_current_context())
            return plan.as_dict() | {"job_args": plan.job_args()}

        plan = prepare()

        build_dataset = DatasetJobOperator(
            task_id="build_dataset",
            application=str(JOB_SCRIPT),
            py_files=[str(path) for path in JOB_PY_FILES],
            application_args=plan["job_args"],
            conn_id=get_settings().spark_conn_id,
            name=build.spark_name,
            conf={"spark.pyspark.python": sys.executable, "spark.ui.showConsoleProgress": "false"},
            execution_timeout=dt.timedelta(hours=1),
        )

        @task(task_id="quality_gate", doc_md=build.gate_doc)
        def quality_gate(plan: dict, params=None, dag_run=None) -> dict:
            from mlpipeline.data import steps as data_steps

            params = params or {}
            with fail_without_retry(data_steps.QualityGateError, ValueError):
                return data_steps.gate(
                    plan_from_xcom(plan),
                    accept_days=params.get("accept_days"),
                    override_reason=params.get("override_reason"),
                    run={"dag_id": dag_run.dag_id, "run_id": dag_run.run_id} if dag_run else None,
                )

        gate = quality_gate(plan)
        wait_for_raw >> plan >> build_dataset >> gate
    return group, plan, gate
