"""
# model_training

Trains a **challenger**: when a dataset version is published, finds good XGBoost
hyperparameters within a fixed budget, trains the final model and registers it in MLflow.

* **Schedule**: Asset `training_dataset` (one run per published version; the version comes
  from the triggering asset event, never from "the newest folder"). Manual retrain: *Trigger*
  and fill the form — `dataset_version` (empty: the newest published version) and `n_trials`
  (empty: the budget in `pipeline.yaml`); REST/CLI conf `{"dataset_version": "2013-02-01",
  "n_trials": 30}`. `max_active_runs=1`.
* **Flow**: `check_dataset` (published, manifest and `_SUCCESS` present, window does not
  overlap the golden set) → `train_model` (Optuna TPE search, seeded, trials and wall time
  from `include/config/pipeline.yaml`; each trial a nested MLflow run with pruning and early
  stopping; final fit, metrics, plots, dataset input, reference sample for drift checks) →
  `register_challenger` (new version of the registered model with every lineage tag, loaded
  once to prove its artifacts, alias `challenger`).
* **Produces**: Asset `model_candidate` (extra: model, version, MLflow run id, dataset version).
* **Needs**: connection `mlflow_default` (or `MLP_MLFLOW_TRACKING_URI`), the lake.
* **Idempotent**: a retry reuses the finished MLflow run of the same Airflow run and never
  registers a second version (looked up by the `airflow_run_id` tag).
* **Triage**: the task log names the reason: unknown or overlapping dataset, hash mismatch,
  one-class label, zero-trial budget, MLflow unreachable (retried). The *MLflow run* button
  on `train_model` and `register_challenger` opens the run.
"""

from __future__ import annotations

import pendulum
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
        """Which dataset version, and may it be trained on."""
        from mlpipeline.training import steps as training_steps

        with fail_without_retry(training_steps.TrainingInputError):
            version = training_steps.requested_version(
                triggering_asset_events, params, manual=dag_run.run_type == "manual"
            )
            manifest = training_steps.check_dataset(version)
        return {
            "version": version,
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
        """Register the version (once per Airflow run) and point alias challenger at it."""
        from mlpipeline.training import steps as training_steps

        context = get_current_context()
        registered = training_steps.register_candidate(trained, context)
        push_link(context["ti"], MLFLOW_RUN_URL_KEY, registered["run_url"])
        outlet_events[MODEL_CANDIDATE].extra = registered
        return registered

    register_challenger(train_model(check_dataset()))


model_training()
