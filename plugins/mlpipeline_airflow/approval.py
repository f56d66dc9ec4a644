"""The human gate before a promotion: Airflow's approval form, asked only when approvals are on.

Approvals are on when ``MLP_REQUIRE_APPROVAL=true`` (the environment of the Airflow processes)
or, without a restart, when the Airflow Variable ``mlp_require_approval`` is ``true`` (Admin →
Variables; ``false`` there switches them off again). The task is always in the graph, so the
deployment DAG has one shape: with approvals off it passes straight through and says so; with
approvals on it waits in the UI's *Required Actions* page (human-in-the-loop) until someone
approves or rejects. A rejection is recorded on the version (tags) and in the audit trail with
the name of who rejected it; an approval names the approver in the promotion's audit record.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

APPROVAL_VARIABLE = "mlp_require_approval"
TRUE_WORDS = ("1", "true", "yes", "on")


def approval_required() -> bool:
    """The Variable ``mlp_require_approval`` when set, else the ``MLP_REQUIRE_APPROVAL`` setting."""
    from airflow.sdk import Variable

    from mlpipeline.settings import get_settings

    override = Variable.get(APPROVAL_VARIABLE, default=None)
    if override is not None and str(override).strip():
        return str(override).strip().lower() in TRUE_WORDS
    return get_settings().require_approval


def responder_name(approval: dict[str, Any] | None) -> str | None:
    """Who answered the approval form (``None`` when no human was asked)."""
    user = (approval or {}).get("responded_by_user") or {}
    return user.get("name") or user.get("id") if isinstance(user, dict) else None


class PromotionApprovalOperator(ApprovalOperator):
    """Approve or reject a promotion in the UI, when approvals are required."""

    def __init__(self, *, model_task_id: str = "evaluate", **kwargs) -> None:
        kwargs.setdefault("response_timeout", dt.timedelta(hours=24))
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)  # unanswered for 24 h: rejected
        super().__init__(**kwargs)
        self.model_task_id = model_task_id

    def execute(self, context):
        if not approval_required():
            self.log.info(
                "approvals are off (MLP_REQUIRE_APPROVAL / Variable %s): promoting without asking",
                APPROVAL_VARIABLE,
            )
            return {"chosen_options": [self.APPROVE], "responded_by_user": None, "asked": False}
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        chosen = (event.get("chosen_options") or [None])[0]
        if chosen == self.REJECT:
            self._record_rejection(context, event)
        result = super().execute_complete(context=context, event=event)
        return {**result, "asked": True}

    def _record_rejection(self, context, event: dict[str, Any]) -> None:
        from mlpipeline.deployment import steps

        evaluated = context["ti"].xcom_pull(task_ids=self.model_task_id)
        who = responder_name(event) or ("timeout" if event.get("timedout") else "unknown")
        dag_run = context["dag_run"]
        steps.reject(
            {**evaluated, "reasons": [f"rejected in the approval form by {who}", *evaluated["reasons"]]},
            actor=steps.settings_actor(dag_run.dag_id, dag_run.run_id, who),
        )
        self.log.info("promotion of %s v%s rejected by %s", evaluated["model"], evaluated["version"], who)
