"""Training end to end on real data: a real MLflow server, the real dataset job, dag.test()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from serving_env import settings_environ
from training_helpers import TRAIN_VERSION, build_lake

from mlpipeline.data import datasets
from mlpipeline.lake import Lake
from mlpipeline.settings import PROJECT_ROOT
from mlpipeline.training import steps as training_steps
from mlpipeline.training import tracking
from mlpipeline.training.train import TrainingInputError

pytestmark = pytest.mark.spark
VERSION = TRAIN_VERSION.isoformat()
MODEL = "flight_delay"


@pytest.fixture(scope="module")
def trained_env(tmp_path_factory, mlflow_server, airflow_db, spark_connect_server):
    """Settings pointing at a lake with one real dataset version and golden set; 4-trial budget."""
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings

    root = tmp_path_factory.mktemp("training")
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["training"].update({"n_trials": 4, "timeout_s": 120, "reference_sample_rows": 500})
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    values = {
        "MLP_LAKE_URI": f"file://{root / 'lake'}",
        "MLP_PIPELINE_CONFIG": str(root / "pipeline.yaml"),
        "MLP_STATE_DIR": str(root / "state"),
    }
    with settings_environ(values):
        yield build_lake(
            root / "lake", get_settings(), get_pipeline_config(), spark_remote=spark_connect_server
        )


@pytest.fixture(scope="module")
def training_run(trained_env):
    """One model_training run through dag.test() with conf (a manual retrain)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "model_training.py"))
    assert bag.import_errors == {}
    dag = bag.dags["model_training"]
    run = dag.test(run_conf={"dataset_version": VERSION})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    registered = next(ti for ti in run.get_task_instances() if ti.task_id == "register_challenger").xcom_pull(
        task_ids="register_challenger"
    )
    return SimpleNamespace(run=run, registered=registered)


def _client():
    tracking.connect()
    return mlflow.MlflowClient()


def test_training_records_everything_in_mlflow(trained_env, training_run):
    client = _client()
    registered = training_run.registered
    assert registered["model"] == MODEL
    mv = client.get_model_version(MODEL, registered["version"])
    assert client.get_model_version_by_alias(MODEL, "challenger").version == mv.version
    for tag in (
        tracking.TAG_DATASET_VERSION, tracking.TAG_DATASET_HASH, tracking.TAG_WINDOW_END, tracking.TAG_GOLDEN,
        tracking.TAG_GIT_SHA, tracking.TAG_SETTINGS_HASH, tracking.TAG_DAG_ID, tracking.TAG_RUN_ID, tracking.TAG_TRY,
    ):  # fmt: skip
        assert mv.tags.get(tag), f"model version lacks tag {tag}"
    manifest = datasets.read_manifest(trained_env, "flights_delay", VERSION)
    assert mv.tags[tracking.TAG_DATASET_HASH] == manifest["content_hash"]
    assert mv.tags[tracking.TAG_GOLDEN] == "v1"
    assert mv.tags[tracking.TAG_DAG_ID] == "model_training"

    parent = client.get_run(mv.run_id)
    assert parent.data.metrics["val_roc_auc"] > 0.6
    for metric in ("val_pr_auc", "val_log_loss", "val_brier", "val_ece", "search_trials"):
        assert metric in parent.data.metrics
    trials = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert len(trials) == 4
    assert {t.data.tags["trial_state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all("eta" in t.data.params for t in trials)
    dataset_inputs = parent.inputs.dataset_inputs
    assert len(dataset_inputs) == 1
    assert dataset_inputs[0].dataset.digest == manifest["content_hash"].split(":")[1][:32]
    assert dataset_inputs[0].dataset.name == f"flights_delay@{VERSION}"
    assert "datasets/flights_delay/ds=" in dataset_inputs[0].dataset.source
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"feature_importance.png", "evaluation", "reference", "best_trial.json"} <= artifacts
    reference = mv.tags[tracking.TAG_REFERENCE]
    assert trained_env.exists(reference.split(trained_env.root_uri + "/", 1)[1])
    assert registered["run_url"].endswith(f"/runs/{parent.info.run_id}")


def test_retries_do_not_register_twice(trained_env, training_run):
    client = _client()
    before = client.search_model_versions(f"name='{MODEL}'")
    run = training_run.run
    context = {
        "dag_run": SimpleNamespace(dag_id="model_training", run_id=run.run_id),
        "ti": SimpleNamespace(dag_id="model_training", run_id=run.run_id, try_number=2),
    }
    trained = training_steps.train_candidate(VERSION, context)  # the finished run is reused
    assert trained["run_id"] == training_run.registered["run_id"]
    again = training_steps.register_candidate(trained, context)
    assert again["version"] == training_run.registered["version"]
    assert len(client.search_model_versions(f"name='{MODEL}'")) == len(before)


def test_reproduce_matches_on_the_golden_set(trained_env, training_run):
    result = subprocess.run(
        [sys.executable, "-m", "mlpipeline", "reproduce", "--model", MODEL, "--version", training_run.registered["version"]],
        capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MATCHES" in result.stdout
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert report["max_abs_diff"] <= 1e-6
    assert report["golden_rows"] == 2000


def _versions() -> int:
    return len(_client().search_model_versions(f"name='{MODEL}'"))


def test_bad_inputs_fail_before_any_registration(trained_env, training_run, tmp_path):
    count = _versions()
    with pytest.raises(
        training_steps.DatasetRefusedError, match="dataset flights_delay version 2013-03-01 is not published"
    ):
        training_steps.train_candidate("2013-03-01")
    with pytest.raises(TrainingInputError, match="a search budget of 0 trials"):
        training_steps.train_candidate(VERSION, n_trials=0)

    # A version whose label has one class only (published properly, so its hash is right).
    manifest, frames = datasets.load_dataset(trained_env, "flights_delay", VERSION)
    one_class = {split: frame.assign(is_delayed=0) for split, frame in frames.items()}
    staged = tmp_path / "staged"
    for split, frame in one_class.items():
        (staged / split).mkdir(parents=True)
        frame.to_parquet(staged / split / "part-00000.parquet", index=False)
    bad = datasets.build_manifest(
        name="flights_delay", kind="training", version="2013-01-09", window=(TRAIN_VERSION.replace(day=1), TRAIN_VERSION.replace(day=9)),
        frames=one_class, job_stats={"feature_columns": manifest["feature_columns"], "categorical_features": manifest["categorical_features"]},
        quality={}, params={}, golden=None,
    )  # fmt: skip
    datasets.publish_dataset(trained_env, staged, bad)
    with pytest.raises(TrainingInputError, match="label is_delayed has one class only"):
        training_steps.train_candidate("2013-01-09")

    # A published file changed after publishing: the manifest hash check refuses it.
    commit = trained_env.read_commit(datasets.dataset_dir("flights_delay", "2013-01-09"))
    path = next(p for p in commit.file_paths() if "/train/" in p)
    tampered = one_class["train"].assign(distance=1.0)
    trained_env.write_bytes(path, tampered.to_parquet(index=False))
    with pytest.raises(training_steps.DatasetRefusedError, match="does not match its manifest"):
        training_steps.train_candidate("2013-01-09")
    assert _versions() == count


def test_dataset_overlapping_the_golden_set_is_refused(trained_env, training_run):
    _, golden = datasets.load_golden(trained_env, "flights_delay_golden", "v1")
    manifest = datasets.build_manifest(
        name="flights_delay_golden", kind="golden", version="v2-overlap",
        window=(TRAIN_VERSION.replace(day=8), TRAIN_VERSION.replace(day=12)),
        frames={"golden": golden}, job_stats={}, quality={}, params={}, golden=None,
    )  # fmt: skip
    lake: Lake = trained_env
    datasets.publish_golden_frame(lake, golden, manifest)
    try:
        with pytest.raises(training_steps.DatasetRefusedError, match="overlaps golden set v2-overlap"):
            training_steps.check_dataset(VERSION)
    finally:
        lake.delete(datasets.golden_dir("flights_delay_golden", "v2-overlap"))


def test_mlflow_down_fails_clearly(trained_env, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9, "schema": "http"}),
    )
    with pytest.raises(
        tracking.MlflowUnavailableError,
        match=r"MLflow tracking server http://127\.0\.0\.1:9 is not reachable",
    ):
        training_steps.train_candidate(VERSION)
