"""
# model_rollback

On-call's lever: **make an earlier good version the champion again**, from a form in the UI
(*Trigger* → fill the form) or automatically (monitoring triggers it with `conf`).

* **Params**: `target_version` (empty = the champion before the current one, from the audit
  trail), `reason` (required), `dry_run` (validate and say what would happen, change nothing).
* **Flow**: `validate_target` (exists; was champion before or passed evaluation; its artifacts
  load and score) → `roll_back` (compare-and-set of alias `champion`, audit record, export,
  server reload and verification). Rolling back to the version already serving is a no-op
  that says so.
* **Produces**: Asset `model_deployed` (action `rollback`).
* **Triage**: the log names why a target was refused; production is unchanged in that case.
  REST: `POST /api/v2/dags/model_rollback/dagRuns` with
  `{"logical_date": null, "conf": {"target_version": "3", "reason": "…"}}`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from mlpipeline.assets import MODEL_DEPLOYED
from mlpipeline.dag_defaults import DEFAULT_ARGS, fail_without_retry, run_deadline
from mlpipeline.pipeline_config import get_pipeline_config

MODEL = get_pipeline_config().training.model_name


@dag(
    dag_id="model_rollback",
    schedule=None,
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Unpaused from the start: it only runs when triggered (by on-call or by monitoring), and a
    # paused DAG would leave monitoring's automatic rollback queued forever.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=1),
    tags=["mlpipeline", "deployment", "on-call"],
    doc_md=__doc__,
    params={
        "target_version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9]*$",
            title="Target version",
            description="Registered version number to serve, e.g. 3. Empty: the champion before the current "
            "one (from the audit trail). Refused unless it was champion before or passed evaluation.",
        ),
        "reason": Param(
            type="string",
            minLength=3,
            title="Reason",
            description="Required: what went wrong and who asked (written to the audit trail).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Validate the target and say what would happen; production is not changed.",
        ),
    },
)
def model_rollback():
    @task
    def validate_target(params=None) -> dict:
        """The target exists, was good before, and loads and scores."""
        from mlpipeline.deployment import steps

        with fail_without_retry(steps.DeploymentInputError):
            if not (params.get("reason") or "").strip():
                raise steps.DeploymentInputError("a rollback needs a reason")
            return steps.rollback_target(MODEL, params.get("target_version") or None)

    @task(outlets=[MODEL_DEPLOYED], pool="champion_alias")
    def roll_back(target: dict, params=None, dag_run=None, outlet_events=None) -> dict:
        """Move alias champion back (compare-and-set), audit, export, reload, verify."""
        from mlpipeline.deployment import steps

        with fail_without_retry(steps.DeploymentInputError):
            result = steps.rollback(
                target,
                reason=params["reason"],
                # Who asked: monitoring's automatic rollback says so in conf; else the UI/REST user.
                actor=steps.settings_actor(
                    dag_run.dag_id,
                    dag_run.run_id,
                    (dag_run.conf or {}).get("requested_by") or dag_run.triggering_user_name,
                ),
                dry_run=bool(params.get("dry_run")),
            )
        if not target["noop"] and not params.get("dry_run"):
            outlet_events[MODEL_DEPLOYED].extra = {
                "model": MODEL, "from_version": target["current"], "to_version": target["target"], "action": "rollback"
            }  # fmt: skip
        return {k: v for k, v in result.items() if k != "server"}

    roll_back(validate_target())


model_rollback()
