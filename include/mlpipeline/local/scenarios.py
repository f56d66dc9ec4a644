"""Failure scenarios for tests and the demo: a deliberately degraded model.

Never used by a DAG. :func:`register_degraded_model` trains XGBoost on the champion's own
training rows with the label inverted (what a label bug upstream would produce) and
registers it like a real version (feature spec, reference sample tag, data window tag), so
that ``steps.force_promote`` (``MLP_ALLOW_FORCE_PROMOTE=true`` only) can put it in
production and monitoring has something real to catch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config

DEGRADED_EXPERIMENT_SUFFIX = "-scenarios"


def register_degraded_model(lake: Lake | None = None, cfg: PipelineConfig | None = None) -> str:
    """Register a model trained on the champion's dataset with inverted labels; return its version."""
    import mlflow
    import xgboost as xgb

    from mlpipeline.data import datasets
    from mlpipeline.serving.model import download_model_version, load_model_dir
    from mlpipeline.training import tracking

    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    model = cfg.training.model_name
    tracking.connect()
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(model, "champion")
    dataset_version = champion.tags.get(tracking.TAG_DATASET_VERSION)
    if not dataset_version:
        raise ValueError(
            f"{model} v{champion.version} names no dataset version (tag {tracking.TAG_DATASET_VERSION})"
        )
    with tempfile.TemporaryDirectory(prefix="mlp-degraded-") as tmp:
        spec = load_model_dir(download_model_version(model, champion.version, Path(tmp) / "champion")).spec
        _, frames = datasets.load_dataset(lake, cfg.dataset.name, dataset_version)
        frame = frames["train"]
        labels = 1 - frame[spec.label].to_numpy()  # the outcome inverted: a label bug upstream
        dtrain = xgb.DMatrix(
            spec.encode_frame(frame),
            label=labels,
            feature_names=list(spec.features),
            feature_types=spec.feature_types,
            enable_categorical=True,
        )
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 6, "eta": 0.3, "seed": 3, "nthread": 2}, dtrain, 60
        )
        spec_file = Path(tmp) / "feature_spec.json"
        spec_file.write_text(spec.to_json())
        mlflow.set_experiment(cfg.training.experiment + DEGRADED_EXPERIMENT_SUFFIX)
        with mlflow.start_run(run_name=f"DEGRADED (inverted labels) from v{champion.version}"):
            info = mlflow.xgboost.log_model(booster, name="model", extra_files=[str(spec_file)])
            reference = client.get_run(champion.run_id).data.tags.get(tracking.TAG_REFERENCE)
            mlflow.set_tags(
                {
                    tracking.TAG_REFERENCE: reference or "",
                    tracking.TAG_ROLE: "scenario",
                    "scenario": "degraded model: inverted labels",
                }
            )
    tags = {
        tracking.TAG_WINDOW_END: champion.tags.get(tracking.TAG_WINDOW_END, dataset_version),
        tracking.TAG_DATASET_VERSION: dataset_version,
        "scenario": "degraded model: inverted labels",
    }
    return str(mlflow.register_model(info.model_uri, model, tags=tags).version)
