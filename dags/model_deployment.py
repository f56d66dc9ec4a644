"""
# model_deployment

Decides whether the new **challenger replaces the champion**, and deploys it if so.

* **Schedule**: Asset `model_candidate` (one run per registered challenger); `max_active_runs=1`.
* **Flow**: `evaluate` (challenger and champion on the frozen golden set: primary metric with
  a seeded paired bootstrap, slices, calibration, and the engineering check through the
  model server's own code path; HTML + JSON report) → `decide` (branch) →
  `promote` (compare-and-set of alias `champion`, audit record, export to the serving
  location, server reload and verification) or `reject` (version tagged with the reasons,
  audit record). With `MLP_REQUIRE_APPROVAL=true` a human approves in the UI first.
* **Policy** (`include/config/pipeline.yaml`, `deployment`): promote when there is no champion,
  or when the uplift's lower bound clears the margin, no slice regresses beyond tolerance,
  latency and memory fit the budgets, and the challenger's data is not older than the
  champion's (a backfill never moves production).
* **Produces**: Asset `model_deployed` on promotion.
* **Triage**: the *Report* button on `evaluate` opens the evaluation report; a
  `ChampionChangedError` means another deployment or rollback moved the champion: rerun.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, get_current_context, task
from mlpipeline_airflow.links import MLFLOW_RUN_URL_KEY, REPORT_URL_KEY, push_link

from mlpipeline.assets import MODEL_CANDIDATE, MODEL_DEPLOYED
from mlpipeline.dag_defaults import DEFAULT_ARGS, fail_without_retry, run_deadline
from mlpipeline.settings import get_settings


@dag(
    dag_id="model_deployment",
    schedule=[MODEL_CANDIDATE],
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=26),
    tags=["mlpipeline", "deployment", "mlflow"],
    doc_md=__doc__,
)
def model_deployment():
    @task
    def evaluate(triggering_asset_events=None, dag_run=None) -> dict:
        """Challenger vs champion on the golden set; the report and the decision."""
        from mlpipeline.deployment import steps

        candidate = (dag_run.conf or {}).get("candidate")
        if not candidate:
            events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
            candidate = max(
                (e.extra for e in events if e.extra.get("version")), key=lambda x: int(x["version"])
            )
        with fail_without_retry(steps.DeploymentInputError):
            evaluated = steps.evaluate_candidate(candidate)
        context = get_current_context()
        push_link(context["ti"], REPORT_URL_KEY, evaluated["report_url"])
        return evaluated

    @task.branch
    def decide(evaluated: dict) -> str:
        """Promote or reject, as the policy decided (each rule is in the report)."""
        return (
            "approve"
            if evaluated["decision"] == "promote" and get_settings().require_approval
            else ("promote" if evaluated["decision"] == "promote" else "reject")
        )

    @task(outlets=[MODEL_DEPLOYED], pool="champion_alias")
    def promote(evaluated: dict, dag_run=None, outlet_events=None) -> dict:
        """Move alias champion (compare-and-set), audit, export, reload the server, verify."""
        from mlpipeline.deployment import steps

        moved = steps.promote(evaluated, actor=steps.settings_actor(dag_run.dag_id, dag_run.run_id))
        outlet_events[MODEL_DEPLOYED].extra = {
            k: moved[k] for k in ("model", "from_version", "to_version")
        } | {"action": "promote"}
        push_link(
            get_current_context()["ti"], MLFLOW_RUN_URL_KEY, evaluated["report_url"].split("/artifacts/")[0]
        )
        return {k: v for k, v in moved.items() if k != "server"}

    @task
    def reject(evaluated: dict, dag_run=None) -> dict:
        """Tag the version with the decision and reasons; the champion is untouched."""
        from mlpipeline.deployment import steps

        return steps.reject(evaluated, actor=steps.settings_actor(dag_run.dag_id, dag_run.run_id))

    evaluated = evaluate()
    branch = decide(evaluated)
    promoted = promote(evaluated)
    rejected = reject(evaluated)
    if get_settings().require_approval:
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        approve = ApprovalOperator(
            task_id="approve",
            subject="Promote {{ ti.xcom_pull(task_ids='evaluate')['model'] }} v{{ ti.xcom_pull(task_ids='evaluate')['version'] }}?",
            body="Evaluation report: {{ ti.xcom_pull(task_ids='evaluate')['report_url'] }}",
        )
        branch >> approve >> promoted
    else:
        branch >> promoted
    branch >> rejected


model_deployment()
