"""
# model_training

Trains a **challenger**: when a dataset version is published, finds good XGBoost
hyperparameters within a fixed budget, trains the final model and registers it in MLflow.

* **Schedule**: Asset `training_dataset`. Airflow may batch several published versions into
  one run (and list only some of them in its events), so the lake's training ledger
  (`training/<model>/ds=<version>/ledger.json`) says what is left: the run trains the newest
  version announced or still *pending*, and records each older pending version as
  *superseded* by it. No version is skipped silently, and none waits for the next event:
  `catch_up` triggers one more run when a version was published while this one trained.
  Manual retrain: *Trigger* and fill the form — `dataset_version` (exactly that version;
  empty: the newest pending, else the newest published) and `n_trials` (empty: the budget in
  `pipeline.yaml`); REST/CLI conf `{"dataset_version": "2013-02-01", "n_trials": 30}`.
  `max_active_runs=1`.
* **Flow**: `check_dataset` (which version; published, manifest and `_SUCCESS` present,
  window does not overlap the golden set; skipped when another run already trained
  everything announced) → `train_model` (Optuna TPE search, seeded, trials and wall time
  from `include/config/pipeline.yaml`; each trial a nested MLflow run with pruning and early
  stopping; final fit, metrics, plots, dataset input, reference sample for drift checks) →
  `register_challenger` (new version of the registered model with every lineage tag, loaded
  once to prove its artifacts, alias `challenger`; ledger entry *trained*) → `catch_up_needed`
  → `catch_up` (a run `catch_up__<version>` for versions published meanwhile).
* **Produces**: Asset `model_candidate` (extra: model, version, MLflow run id, dataset version).
* **Needs**: connection `mlflow_default` (or `MLP_MLFLOW_TRACKING_URI`), the lake.
* **Idempotent**: a retry reuses the finished MLflow run of the same Airflow run and never
  registers a second version (looked up by the `airflow_run_id` tag).
* **Triage**: the task log names the reason: unknown or overlapping dataset, hash mismatch,
  one-class label, zero-trial budget, MLflow unreachable (retried). The *MLflow run* button
  on `train_model` and `register_challenger` opens the run.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from mlpipeline_airflow.links import MLFLOW_RUN_URL_KEY, push_link

from mlpipeline.assets import MODEL_CANDIDATE, TRAINING_DATASET
from mlpipeline.dag_defaults import DEFAULT_ARGS, fail_without_retry, run_deadline


@dag(
    dag_id="model_training",
    schedule=[TRAINING_DATASET],
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=2),
    tags=["mlpipeline", "training", "mlflow"],
    doc_md=__doc__,
    params={
        "dataset_version": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Dataset version",
            description="The published dataset version to train on (YYYY-MM-DD). Empty: the version the "
            "triggering asset event announced, or for a manual run the newest published version.",
        ),
        "n_trials": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=500,
            title="Search trials",
            description="Optuna trials for this run. Empty: the budget in include/config/pipeline.yaml.",
        ),
    },
)
def model_training():
    @task
    def check_dataset(triggering_asset_events=None, params=None, dag_run=None) -> dict:
        """Which dataset version (ledger: newest pending), and may it be trained on."""
        from airflow.sdk.exceptions import AirflowSkipException

        from mlpipeline.training import steps as training_steps

        with fail_without_retry(training_steps.TrainingInputError):
            selection = training_steps.select_version(
                triggering_asset_events, params, manual=dag_run.run_type == "manual"
            )
            if selection.version is None:
                raise AirflowSkipException(selection.nothing_to_do)
            manifest = training_steps.check_selected(selection.version, dag_run.run_id)
        training_steps.record_superseded(selection, dag_run.run_id)
        return {
            "version": selection.version,
            "superseded": selection.superseded,
            "window": manifest["window"],
            "content_hash": manifest["content_hash"],
            "n_trials": params.get("n_trials"),
        }

    @task
    def train_model(dataset: dict) -> dict:
        """Search, fit and log the model in one MLflow parent run."""
        from mlpipeline.training import steps as training_steps

        context = get_current_context()
        with fail_without_retry(training_steps.TrainingInputError):  # refused data; MLflow down is retried
            trained = training_steps.train_candidate(
                dataset["version"], context, n_trials=dataset.get("n_trials")
            )
        push_link(context["ti"], MLFLOW_RUN_URL_KEY, trained["run_url"])
        return trained

    @task(outlets=[MODEL_CANDIDATE])
    def register_challenger(trained: dict, outlet_events=None) -> dict:
        """Register the version (once per Airflow run), point alias challenger at it, record it."""
        from mlpipeline.training import steps as training_steps

        context = get_current_context()
        registered = training_steps.register_candidate(trained, context)
        training_steps.record_trained(registered, context["dag_run"].run_id)
        push_link(context["ti"], MLFLOW_RUN_URL_KEY, registered["run_url"])
        outlet_events[MODEL_CANDIDATE].extra = registered
        return registered

    @task.short_circuit
    def catch_up_needed(registered: dict) -> str | None:
        """The newest version published while this run trained (then ``catch_up`` runs), else skip."""
        from mlpipeline.training import steps as training_steps

        newer = training_steps.pending_after(registered["dataset_version"])
        return newer[-1] if newer else None

    newer = catch_up_needed(register_challenger(train_model(check_dataset())))
    newer >> TriggerDagRunOperator(
        task_id="catch_up",
        trigger_dag_id="model_training",
        trigger_run_id="catch_up__{{ ti.xcom_pull(task_ids='catch_up_needed') }}",
        conf={},  # no version: the new run trains the newest pending one
        skip_when_already_exists=True,
        execution_timeout=dt.timedelta(minutes=5),
    )


model_training()
