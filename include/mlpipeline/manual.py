"""Every step by hand, without a scheduler: what ``python -m mlpipeline <step>`` runs.

The first maturity stage of an ML pipeline is a person running each step in order. These
functions call the same step code the DAGs call, with the same refusals, and record who acted
(``cli:<user>``) where the DAGs record the Airflow run. Each returns a small JSON-able dict.
"""

from __future__ import annotations

import datetime as dt
import getpass
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

from mlpipeline import locations
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import get_pipeline_config
from mlpipeline.settings import get_settings


class ManualStepError(RuntimeError):
    """A step run by hand was refused or failed; the message says why and what to do."""


def actor() -> str:
    """Who ran the step, for the audit trail and the model's tags."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (containers): still say it came from the CLI
        user = "unknown"
    return f"cli:{user}"


def _context(step: str) -> dict[str, Any]:
    """A stand-in for the Airflow context the steps tag their MLflow runs with (one id per call)."""
    run_id = f"cli__{step}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
    return {"dag_run": SimpleNamespace(dag_id="cli", run_id=run_id), "ti": SimpleNamespace(try_number=1)}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def build_dataset(
    day: dt.date | None = None,
    golden: bool = False,
    version: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    sample_size: int | None = None,
) -> dict[str, Any]:
    """Prepare → Spark job (``local[*]``, in a child process) → quality gate → atomic publish."""
    from mlpipeline.data import datasets
    from mlpipeline.data import steps as data_steps

    cfg, settings = get_pipeline_config(), get_settings()
    lake = Lake.from_settings(settings)
    if golden:
        start = start or cfg.golden.default_start
        end = end or cfg.golden.default_end
        version = version or datasets.next_golden_version(lake, cfg.golden.name)
        if lake.is_committed(datasets.golden_dir(cfg.golden.name, version)):
            raise ManualStepError(
                f"golden version {cfg.golden.name}/{version} already exists: golden sets are frozen"
            )
        plan = data_steps.prepare(
            "golden", cfg.golden.name, version, start, end, lake=lake, settings=settings, cfg=cfg
        )
    else:
        if day is None:
            raise ManualStepError("name the version day: --day YYYY-MM-DD")
        start, end = data_steps.training_window(day, cfg, settings)
        plan = data_steps.prepare(
            "training", cfg.dataset.name, day.isoformat(), start, end, lake=lake, settings=settings, cfg=cfg
        )
    job = subprocess.run(
        [sys.executable, str(datasets.JOB_SCRIPT), *plan.job_args()],
        capture_output=True,
        text=True,
        check=False,
    )
    if job.returncode != 0:
        tail = "\n".join(job.stderr.strip().splitlines()[-15:])
        raise ManualStepError(f"the Spark job failed for {plan.version}; nothing was published:\n{tail}")
    quality = data_steps.gate(plan, lake=lake, cfg=cfg)
    run = {"dag_id": "cli", "run_id": actor()}
    if golden:
        manifest = data_steps.publish_golden(
            plan, quality, sample_size=sample_size or cfg.golden.default_sample_size, run=run, lake=lake
        )
    else:
        manifest = data_steps.publish_training(plan, quality, run=run, lake=lake, cfg=cfg)
    return data_steps.asset_extra(manifest)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def train(dataset_version: str | None, n_trials: int | None = None) -> dict[str, Any]:
    """Check the dataset, search + fit, register a challenger (the newest version when none is named)."""
    from mlpipeline.training import steps as training_steps

    context = _context("train")
    version = training_steps.requested_version(None, {"dataset_version": dataset_version}, manual=True)
    training_steps.check_dataset(version)
    trained = training_steps.train_candidate(version, context, n_trials=n_trials)
    return training_steps.register_candidate(trained, context)


# --------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------
def evaluate(version: str | None) -> dict[str, Any]:
    """Challenger vs champion on the golden set: the decision, its reasons and the report."""
    from mlpipeline.deployment import steps as deployment_steps

    model = get_pipeline_config().training.model_name
    candidate = deployment_steps.requested_candidate(model, None, version)
    evaluated = deployment_steps.evaluate_candidate(candidate)
    keys = ("model", "version", "decision", "reasons", "expected_champion", "report_path", "report_url")
    return {k: evaluated.get(k) for k in keys}


def promote(version: str | None) -> dict[str, Any]:
    """Evaluate, then promote (compare-and-set, audit, export, reload) or reject, as the policy says."""
    from mlpipeline.deployment import steps as deployment_steps

    model = get_pipeline_config().training.model_name
    candidate = deployment_steps.requested_candidate(model, None, version)
    evaluated = deployment_steps.evaluate_candidate(candidate)
    if evaluated["decision"] != "promote":
        return deployment_steps.reject(evaluated, actor=actor())
    moved = deployment_steps.promote(evaluated, actor=actor(), reload=_server_up())
    return {k: v for k, v in moved.items() if k != "server"} | {"decision": "promote"}


def rollback(target: str | None, reason: str, dry_run: bool = False) -> dict[str, Any]:
    """Move alias champion back (default: the champion before the current one)."""
    from mlpipeline.deployment import steps as deployment_steps

    if not reason or len(reason.strip()) < 3:
        raise ManualStepError("a rollback needs a reason (--reason 'what went wrong, who asked')")
    model = get_pipeline_config().training.model_name
    checked = deployment_steps.rollback_target(model, target)
    result = deployment_steps.rollback(
        checked, reason=reason, actor=actor(), dry_run=dry_run, reload=_server_up()
    )
    return {k: v for k, v in result.items() if k != "server"}


def _server_up() -> bool:
    """Reload the model server only when one answers (a CLI-only setup may have none)."""
    import httpx

    try:
        return httpx.get(f"{get_settings().serving_url}/health", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


# --------------------------------------------------------------------------------------
# Monitoring
# --------------------------------------------------------------------------------------
def monitor(day: dt.date) -> dict[str, Any]:
    """The day's drift, quality and serving checks and the decision (the action is printed, not taken)."""
    from mlpipeline.monitoring import steps as monitoring_steps

    lake = Lake.from_settings()
    if not lake.exists(locations.predictions_dir(day)):
        alarm = monitoring_steps.no_traffic_alarm(day.isoformat(), "no prediction log for the day (CLI)")
        return {"day": day.isoformat(), "decision": "no_traffic", "alarm": alarm.get("what")}
    drift = monitoring_steps.run_drift_check(day)
    quality = monitoring_steps.run_quality_check(day)
    serving = monitoring_steps.run_serving_checks(day)
    decided = monitoring_steps.decide_and_record(day.isoformat(), drift, quality, serving)
    action = {
        "retrain": f"python -m mlpipeline build-dataset --day {day.isoformat()} && python -m mlpipeline train",
        "rollback": "python -m mlpipeline rollback --reason 'monitoring " + day.isoformat() + "'",
    }.get(decided["decision"])
    return {
        "day": day.isoformat(),
        "decision": decided["decision"],
        "reasons": decided.get("reasons"),
        "next_step": action,
    }
