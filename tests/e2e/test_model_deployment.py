"""Deployment and rollback end to end: real MLflow, real model server process, dag.test()."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import httpx
import mlflow
import pytest
from serving_env import model_server, module_settings, settings_environ
from serving_fixtures import CATEGORICAL, FEATURES, publish_dataset_version, real_rows

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
    frame = real_rows(n=6000, seed=seed + 100)
    if shuffle:
        frame = frame.assign(is_delayed=frame["is_delayed"].sample(frac=1.0, random_state=seed).to_numpy())
    return register_frame(frame, {tracking.TAG_WINDOW_END: window_end}, rounds, depth, seed)


def register_frame(frame, tags: dict[str, str], rounds: int, depth: int, seed: int = 0) -> str:
    """Train on ``frame`` and register the model under MODEL with ``tags``."""
    import xgboost as xgb

    from mlpipeline.features import FeatureSpec

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
    mv = mlflow.register_model(info.model_uri, MODEL, tags=tags)
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


# --- The recent set decides, the golden set guards (real July rows against a January champion) ---
def july_tags(version: str, trained_end: str) -> dict[str, str]:
    return {
        tracking.TAG_DATASET: "flights_delay",
        tracking.TAG_DATASET_VERSION: version,
        tracking.TAG_WINDOW_END: version,
        tracking.TAG_TRAINED_END: trained_end,
    }


def test_recent_set_decides_and_the_golden_set_guards(env, tmp_path):
    """The champion is a January model (golden: January). July challengers are judged on July's
    held-out newest week: a model that learnt July wins there and keeps the golden set; one that
    forgot January, or one broken on one airport, is rejected with the rule that caught it; a
    version without held-out days is judged on the golden set alone, and the report says so."""
    import pandas as pd

    lake, client = env["lake"], mlflow.MlflowClient()
    january = real_rows(n=8000, seed=300)
    if champion() is None:  # run alone; otherwise the champion the tests above left (all January)
        first = register_frame(january, {tracking.TAG_WINDOW_END: "2013-02-10"}, 150, 6, seed=30)
        assert deploy(first)[1]["promote"] == "success"

    july_train = real_rows(n=20_000, seed=301, month=7, days=(1, 21), with_date=True)
    recent = real_rows(n=100_000, seed=302, month=7, days=(22, 28), with_date=True)
    plan = {
        "kind": "time",
        "train": {"start": "2013-07-01", "end": "2013-07-16", "days": 16},
        "validation": {"start": "2013-07-17", "end": "2013-07-21", "days": 5},
        "recent": {"start": "2013-07-22", "end": "2013-07-28", "days": 7},
    }
    split_at = july_train["flight_date"] <= dt.date(2013, 7, 16)
    publish_dataset_version(lake, tmp_path, "2013-07-28",
                    {"train": july_train[split_at], "validation": july_train[~split_at], "recent": recent}, plan)  # fmt: skip
    publish_dataset_version(lake, tmp_path, "2013-07-21", {"train": july_train[split_at], "validation": july_train[~split_at]},
                    {**plan, "recent": None})  # fmt: skip
    features = [c for c in january.columns if c != "flight_date"]

    # Forgot January: July rows, January rows with shuffled labels -> the golden guard rejects.
    noisy_january = january.assign(
        is_delayed=january["is_delayed"].sample(frac=1.0, random_state=1).to_numpy()
    )
    forgetful = register_frame(
        pd.concat([july_train[features], noisy_january[features]], ignore_index=True),
        july_tags("2013-07-28", "2013-07-21"), 150, 6, seed=31,
    )  # fmt: skip
    judged = steps.evaluate_candidate({"model": MODEL, "version": forgetful})
    assert judged["decision"] == "reject"
    assert [r.split(":")[0] for r in judged["reasons"]] == ["golden_guard"], judged["reasons"]
    assert judged["judged_on"]["decided_by"] == "recent set, golden guard"

    # Broken on JFK: labels shuffled there -> the recent set's JFK slice regresses.
    jfk = july_train["origin"] == "JFK"
    broken_jfk = july_train.copy()
    broken_jfk.loc[jfk, "is_delayed"] = (
        broken_jfk.loc[jfk, "is_delayed"].sample(frac=1.0, random_state=2).to_numpy()
    )
    one_airport = register_frame(
        pd.concat([broken_jfk[features], january[features]], ignore_index=True),
        july_tags("2013-07-28", "2013-07-21"), 150, 6, seed=32,
    )  # fmt: skip
    judged = steps.evaluate_candidate({"model": MODEL, "version": one_airport})
    assert judged["decision"] == "reject"
    failed = [r for r in judged["reasons"] if r.startswith("slices: recent set")]
    assert failed, judged["reasons"]
    assert "origin=JFK" in failed[0]

    # A version whose dataset held no days out: the golden set alone decides, and says so.
    both = pd.concat([july_train[features], january[features]], ignore_index=True)
    no_recent = register_frame(both, july_tags("2013-07-21", "2013-07-21"), 150, 6, seed=33)
    judged = steps.evaluate_candidate({"model": MODEL, "version": no_recent})
    assert judged["judged_on"]["decided_by"] == "golden set"
    assert judged["judged_on"]["recent"].startswith(
        "none (dataset flights_delay ds=2013-07-21 holds no recent days"
    )
    report = lake.read_json(f"reports/evaluation/{MODEL}/v{no_recent}/report.json")
    recent_rule = next(r for r in report["rules"] if r["rule"] == "recent_set")
    assert "0 recent labelled rows (< 500): the golden set alone decides" in recent_rule["detail"]

    # Learnt July and kept January: wins on the recent week, within the golden tolerance -> promoted
    # through the DAG; the version's tags name both sets.
    learnt = register_frame(both, july_tags("2013-07-28", "2013-07-21"), 150, 6, seed=34)
    _, states = deploy(learnt)
    assert states["promote"] == "success", states
    assert champion() == learnt
    assert served(env) == learnt
    tags = client.get_model_version(MODEL, learnt).tags
    assert tags["decided_by"] == "recent set, golden guard"
    assert tags["evaluated_golden"].startswith("flights_delay_golden/v1 ")
    assert tags["evaluated_recent"].startswith("flights_delay/ds=2013-07-28 2013-07-22..2013-07-28 ")
    report = lake.read_json(f"reports/evaluation/{MODEL}/v{learnt}/report.json")
    recent_eval = report["evaluation"]["recent"]
    assert recent_eval["rows"] == len(recent)
    assert recent_eval["bootstrap"]["ci_low"] > 0
    # January golden vs July traffic: the golden set is stale, its guard weighs less (and says so).
    staleness = report["evaluation"]["golden"]["staleness"]
    assert staleness["stale"] is True
    assert "temp" in staleness["drifted"]
    guard = next(r for r in report["rules"] if r["rule"] == "golden_guard")
    assert "vs tolerance -0.1 (golden set stale: " in guard["detail"]
    page = lake.read_bytes(f"reports/evaluation/{MODEL}/v{learnt}/report.html").decode()
    assert "2013-07-22..2013-07-28" in page
    assert "2013-12-01..2013-12-30" in page  # both sets' date ranges, side by side

    # A champion that trained on some of the recent days: those days are excluded and named.
    overlapping = client.get_model_version(MODEL, one_airport)
    client.set_model_version_tag(MODEL, one_airport, tracking.TAG_TRAINED_END, "2013-07-24")
    frame, info = steps.recent_set(
        lake, client.get_model_version(MODEL, learnt), client.get_model_version(MODEL, one_airport)
    )
    assert overlapping.version == one_airport
    assert info["excluded_days"] == ["2013-07-22", "2013-07-23", "2013-07-24"]
    assert (info["start"], info["end"], info["days"]) == ("2013-07-25", "2013-07-28", 4)
    assert set(frame["flight_date"].astype(str)) == {"2013-07-25", "2013-07-26", "2013-07-27", "2013-07-28"}
