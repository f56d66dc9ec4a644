"""
# model_deployment

Decides whether the new **challenger replaces the champion**, and deploys it if so.

* **Schedule**: Asset `model_candidate` (one run per registered challenger); `max_active_runs=1`.
* **Flow**: `evaluate` (challenger and champion on the frozen golden set: primary metric with
  a seeded paired bootstrap, slices, calibration, and the engineering check through the
  model server's own code path; HTML + JSON report) → `decide` (branch) →
  `promote` (compare-and-set of alias `champion`, audit record, export to the serving
  location, server reload and verification) or `reject` (version tagged with the reasons,
  audit record). Between `decide` and `promote`, `approve`: with approvals on
  (`MLP_REQUIRE_APPROVAL=true`, or the Variable `mlp_require_approval` = `true` without a
  restart) a human approves or rejects in the UI (*Required Actions*); unanswered for 24 h it is
  rejected. With approvals off it passes straight through. A human rejection is tagged on the
  version and written to the audit trail with the user's name; an approval names the approver
  in the promotion's audit record.
* **Manual run**: *Trigger* with `challenger_version` (empty: the version behind alias
  `challenger`) re-evaluates that version against the current champion.
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
from airflow.sdk import Param, dag, get_current_context, task
from mlpipeline_airflow.approval import PromotionApprovalOperator, responder_name
from mlpipeline_airflow.links import MLFLOW_RUN_URL_KEY, REPORT_URL_KEY, push_link

from mlpipeline.assets import MODEL_CANDIDATE, MODEL_DEPLOYED
from mlpipeline.dag_defaults import DEFAULT_ARGS, fail_without_retry, run_deadline
from mlpipeline.pipeline_config import get_pipeline_config

MODEL = get_pipeline_config().training.model_name


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
    params={
        "challenger_version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9]*$",
            title="Challenger version",
            description="Registered version to evaluate against the champion, e.g. 4. Empty: the version "
            "the triggering asset event announced, or for a manual run the version behind alias challenger.",
        ),
    },
)
def model_deployment():
    @task
    def evaluate(triggering_asset_events=None, params=None, dag_run=None) -> dict:
        """Challenger vs champion on the golden set; the report and the decision."""
        from mlpipeline.deployment import steps

        with fail_without_retry(steps.DeploymentInputError):
            candidate = steps.requested_candidate(
                MODEL,
                triggering_asset_events,
                params.get("challenger_version") or None,
                conf_candidate=(dag_run.conf or {}).get("candidate"),
            )
            evaluated = steps.evaluate_candidate(candidate)
        context = get_current_context()
        push_link(context["ti"], REPORT_URL_KEY, evaluated["report_url"])
        return evaluated

    @task.branch
    def decide(evaluated: dict) -> str:
        """Promote (through the approval step) or reject, as the policy decided."""
        return "approve" if evaluated["decision"] == "promote" else "reject"

    @task(outlets=[MODEL_DEPLOYED], pool="champion_alias")
    def promote(evaluated: dict, approval: dict, dag_run=None, outlet_events=None) -> dict:
        """Move alias champion (compare-and-set), audit, export, reload the server, verify."""
        from mlpipeline.deployment import steps

        actor = steps.settings_actor(dag_run.dag_id, dag_run.run_id, responder_name(approval))
        moved = steps.promote(evaluated, actor=actor)
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
    approve = PromotionApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='evaluate')['model'] }} "
        "v{{ ti.xcom_pull(task_ids='evaluate')['version'] }} to champion?",
        body="The evaluation passed every rule of the policy.\n\n"
        "* Challenger: v{{ ti.xcom_pull(task_ids='evaluate')['version'] }}, champion: "
        "v{{ ti.xcom_pull(task_ids='evaluate')['expected_champion'] }}\n"
        "* Report: {{ ti.xcom_pull(task_ids='evaluate')['report_url'] }}\n\n"
        "Approve moves alias champion and reloads the model server; Reject tags the version as "
        "rejected by you.",
    )
    decide(evaluated) >> [approve, reject(evaluated)]
    promote(evaluated, approve.output)


model_deployment()
