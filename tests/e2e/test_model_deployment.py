"""Deployment and rollback end to end: real MLflow, real model server process, dag.test()."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import httpx
import mlflow
import pytest
from serving_env import model_server, module_settings, settings_environ
from serving_fixtures import CATEGORICAL, FEATURES, real_rows

from mlpipeline.data import datasets
from mlpipeline.deployment import registry, steps
from mlpipeline.lake import Lake
from mlpipeline.settings import PROJECT_ROOT
from mlpipeline.training import tracking

MODEL = "flight_delay_deploy_test"
TOKEN = "deploy-test-token"


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_server, airflow_db):
    """Lake with a real golden set, a pipeline config for MODEL, and the real model server."""
    import yaml

    root = tmp_path_factory.mktemp("deploy")
    cfg = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    cfg["training"]["model_name"] = MODEL
    # The latency budget is loosened here only: a loaded 2-core CI machine must not flip decisions.
    cfg["deployment"].update({"slice_min_rows": 150, "engineering_repeats": 200, "max_p99_latency_ms": 100.0})
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    port, values = module_settings(root, TOKEN)
    with settings_environ(values):
        lake = Lake.from_settings()
        golden = real_rows(n=3000, seed=42)
        manifest = datasets.build_manifest(
            name="flights_delay_golden", kind="golden", version="v1", window=(dt.date(2013, 12, 1), dt.date(2013, 12, 30)),
            frames={"golden": golden}, job_stats={}, quality={"success": True}, params={}, golden=None,
        )  # fmt: skip
        datasets.publish_golden_frame(lake, golden, manifest)
        with model_server(root, port, MLP_SERVING_POLL_S="1") as url:
            yield {"lake": lake, "url": url, "root": root}


def register(window_end: str, rounds: int, depth: int, seed: int = 0, shuffle: bool = False) -> str:
    """Train on real rows and register a version as model_training would (tags included)."""
    import xgboost as xgb

    from mlpipeline.features import FeatureSpec

    frame = real_rows(n=6000, seed=seed + 100)
    if shuffle:
        frame = frame.assign(is_delayed=frame["is_delayed"].sample(frac=1.0, random_state=seed).to_numpy())
    spec = FeatureSpec.fit(frame, FEATURES, CATEGORICAL)
    dtrain = xgb.DMatrix(spec.encode_frame(frame), label=frame["is_delayed"], feature_names=FEATURES,
                         feature_types=spec.feature_types, enable_categorical=True)  # fmt: skip
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "seed": seed, "nthread": 1},
        dtrain,
        rounds,
    )
    tracking.connect()
    mlflow.set_experiment("deploy-test")
    spec_file = Path(os.environ["MLP_STATE_DIR"]) / "feature_spec.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_json())
    with mlflow.start_run():
        info = mlflow.xgboost.log_model(booster, name="model", extra_files=[str(spec_file)])
    mv = mlflow.register_model(info.model_uri, MODEL, tags={tracking.TAG_WINDOW_END: window_end})
    return str(mv.version)


def run_dag(dag_id: str, conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / f"{dag_id}.py")).dags[dag_id]
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf=conf)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def deploy(version: str):
    return run_dag("model_deployment", {"candidate": {"model": MODEL, "version": version}})


def champion() -> str | None:
    tracking.connect()
    return registry.current_champion(mlflow.MlflowClient(), MODEL)


def served(env) -> str:
    return httpx.get(f"{env['url']}/health", timeout=5).json()["version"]


def test_lifecycle(env, capfd):
    lake = env["lake"]
    weak = register("2013-01-28", rounds=3, depth=2)
    run, states = deploy(weak)
    assert run.state == "success", states
    assert states["promote"] == "success"
    assert states["reject"] == "skipped"
    assert champion() == weak
    assert served(env) == weak

    strong = register("2013-01-29", rounds=150, depth=6, seed=1)
    run, states = deploy(strong)
    assert states["promote"] == "success", states
    assert champion() == strong
    assert served(env) == strong
    assert lake.exists(f"reports/evaluation/{MODEL}/v{strong}/report.html")

    noise = register("2013-01-30", rounds=150, depth=6, seed=2, shuffle=True)
    run, states = deploy(noise)
    assert states["reject"] == "success", states
    assert states["promote"] == "skipped", states
    assert champion() == strong
    tags = mlflow.MlflowClient().get_model_version(MODEL, noise).tags
    assert tags[registry.TAG_DECISION] == "reject"
    assert "uplift" in tags[registry.TAG_REASONS]

    older = register("2013-01-10", rounds=300, depth=8, seed=3)  # good, but trained on older data
    run, states = deploy(older)
    assert states["reject"] == "success", states
    assert (
        "data_not_older" in mlflow.MlflowClient().get_model_version(MODEL, older).tags[registry.TAG_REASONS]
    )
    assert champion() == strong

    # On-call rolls back to the previous champion (empty target = from the audit trail).
    run, states = run_dag(
        "model_rollback", {"target_version": "", "reason": "latency alarm in test", "dry_run": False}
    )
    assert run.state == "success", states
    assert champion() == weak
    assert served(env) == weak
    run, states = run_dag("model_rollback", {"target_version": weak, "reason": "again", "dry_run": False})
    assert run.state == "success"  # already serving: a no-op that says so
    run, states = run_dag(
        "model_rollback", {"target_version": noise, "reason": "try the rejected one", "dry_run": False}
    )
    assert states["validate_target"] == "failed"
    assert "was never champion and did not pass evaluation" in capfd.readouterr().out
    run, states = run_dag("model_rollback", {"target_version": "999", "reason": "missing", "dry_run": False})
    assert states["validate_target"] == "failed"
    assert champion() == weak

    history = registry.read_history(lake, MODEL)
    assert [(h["action"], h["from_version"], h["to_version"]) for h in history] == [
        ("promote", None, weak), ("promote", weak, strong), ("reject", strong, noise), ("reject", strong, older),
        ("rollback", strong, weak),
    ]  # fmt: skip
    assert all(h["actor"].startswith("airflow:model_") for h in history)
    assert history[-1]["reasons"] == ["latency alarm in test"]


def test_race_and_crash_recovery(env):
    lake = env["lake"]
    start = champion()
    a = register("2013-02-05", rounds=150, depth=6, seed=5)
    b = register("2013-02-06", rounds=150, depth=6, seed=6)
    evaluated_a = steps.evaluate_candidate({"model": MODEL, "version": a})
    evaluated_b = steps.evaluate_candidate({"model": MODEL, "version": b})
    assert evaluated_a["expected_champion"] == evaluated_b["expected_champion"] == start
    steps.promote(evaluated_a, actor="test:a")
    with pytest.raises(registry.ChampionChangedError, match="re-run the evaluation"):
        steps.promote(evaluated_b, actor="test:b")
    assert champion() == a
    assert served(env) == a
    assert [
        h["to_version"] for h in registry.read_history(lake, MODEL) if h["actor"].startswith("test:")
    ] == [a]

    # Crash after the alias move, before export: the retry converges.
    c = register("2013-02-07", rounds=150, depth=6, seed=7)
    evaluated_c = steps.evaluate_candidate({"model": MODEL, "version": c})
    mlflow.MlflowClient().set_registered_model_alias(MODEL, registry.CHAMPION, c)  # the step that "crashed"
    steps.promote(evaluated_c, actor="test:c")
    assert champion() == c
    assert served(env) == c
    assert next(h for h in registry.read_history(lake, MODEL) if h["actor"] == "test:c")["from_version"] == a
    steps.promote(evaluated_c, actor="test:c")  # a second retry changes nothing
    assert len([h for h in registry.read_history(lake, MODEL) if h["actor"] == "test:c"]) == 1


def test_bad_golden_and_unloadable_challenger(env, session_dir):
    lake = env["lake"]
    broken = register("2013-03-01", rounds=5, depth=2, seed=9)
    model_id = mlflow.MlflowClient().get_model_version(MODEL, broken).source.split("/")[-1]
    # Corrupt the stored artifact on the MLflow server's artifact root (session directory).
    artifacts = next((session_dir / "mlflow" / "artifacts").glob(f"**/{model_id}/artifacts/model.ubj"))
    artifacts.write_bytes(b"corrupt")
    with pytest.raises(
        steps.DeploymentInputError, match=f"challenger {MODEL} v{broken} artifacts do not load"
    ):
        steps.evaluate_candidate({"model": MODEL, "version": broken})
    before = champion()
    candidate = before or register("2013-03-02", rounds=20, depth=4, seed=10)
    commit = lake.read_commit("golden/flights_delay_golden/v1")
    path = next(p for p in commit.file_paths() if p.endswith("golden.parquet"))
    original = lake.read_bytes(path)
    _, frame = datasets.load_golden(lake, "flights_delay_golden", "v1")
    lake.write_bytes(path, frame.assign(is_delayed=0).to_parquet(index=False))
    try:
        with pytest.raises(steps.DeploymentInputError, match="does not match its manifest"):
            steps.evaluate_candidate({"model": MODEL, "version": candidate})
    finally:
        lake.write_bytes(path, original)
    assert champion() == before
