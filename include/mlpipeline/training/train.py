"""XGBoost training: Optuna search (nested MLflow runs), final fit, logging, registration.

Categorical features use XGBoost's native support (``hist``, feature type ``"c"``) on codes
from the :class:`~mlpipeline.features.FeatureSpec`; matrices are numpy ``float32`` end to end,
the same arrays the model server builds.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.features import FeatureSpec
from mlpipeline.pipeline_config import TrainingConfig

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd
    import xgboost as xgb

log = logging.getLogger(__name__)

INTEGER_PARAMS = frozenset({"max_depth", "max_cat_to_onehot", "max_bin", "max_leaves"})
SPEC_FILE = "feature_spec.json"


class TrainingInputError(ValueError):
    """The dataset or the settings cannot train a model (named reason, nothing registered)."""


@dataclass
class TrainingData:
    spec: FeatureSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    train_frame: pd.DataFrame

    def dmatrix(self, split: str, nthread: int) -> xgb.DMatrix:
        import xgboost as xgb

        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_valid, self.y_valid)
        return xgb.DMatrix(
            x,
            label=y,
            feature_names=list(self.spec.features),
            feature_types=self.spec.feature_types,
            enable_categorical=True,
            nthread=nthread,
        )


def prepare_data(manifest: dict[str, Any], frames: dict[str, pd.DataFrame]) -> TrainingData:
    """Encode a published dataset; refuse one that cannot train a classifier."""
    import numpy as np

    label = manifest.get("label", "is_delayed")
    features = list(manifest.get("feature_columns") or [])
    if not features:
        raise TrainingInputError(f"dataset {manifest['name']} {manifest['version']} lists no feature columns")
    for split, frame in frames.items():
        if frame.empty:
            raise TrainingInputError(f"dataset {manifest['version']}: the {split} split is empty")
        classes = sorted(int(v) for v in frame[label].dropna().unique())
        if classes != [0, 1]:
            raise TrainingInputError(
                f"dataset {manifest['version']}: label {label} has one class only ({classes}) in the {split} "
                "split; a classifier needs both"
            )
    spec = FeatureSpec.fit(frames["train"], features, list(manifest.get("categorical_features") or []), label)
    return TrainingData(
        spec=spec,
        x_train=spec.encode_frame(frames["train"]),
        y_train=frames["train"][label].to_numpy(dtype=np.float32),
        x_valid=spec.encode_frame(frames["validation"]),
        y_valid=frames["validation"][label].to_numpy(dtype=np.float32),
        train_frame=frames["train"],
    )


def base_params(cfg: TrainingConfig) -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "eval_metric": ["auc", "logloss"],  # the last one drives early stopping
        "tree_method": "hist",
        "seed": cfg.seed,
        "nthread": cfg.nthread,
        "verbosity": 0,
    }


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> dict[str, Any]:
    params = {}
    for name, bounds in space.items():
        low, high = bounds[0], bounds[1]
        log_scale = len(bounds) == 3
        if name in INTEGER_PARAMS:
            params[name] = trial.suggest_int(name, int(low), int(high), log=log_scale)
        else:
            params[name] = trial.suggest_float(name, float(low), float(high), log=log_scale)
    return params


def _pruning_callback(trial: optuna.Trial, warmup: int):
    import optuna
    import xgboost as xgb

    class OptunaPruning(xgb.callback.TrainingCallback):
        """Report validation log loss to Optuna every round; stop a trial Optuna prunes."""

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            value = evals_log["validation"]["logloss"][-1]
            trial.report(value, step=epoch)
            if epoch >= warmup and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at round {epoch} (validation logloss {value:.5f})")
            return False

    return OptunaPruning()


def search(data: TrainingData, cfg: TrainingConfig, n_trials: int, timeout_s: float) -> dict[str, Any]:
    """Seeded TPE search; each trial is a nested MLflow run. Returns the best trial's summary."""
    import mlflow
    import optuna
    import xgboost as xgb

    from mlpipeline.training.tracking import TAG_ROLE

    if n_trials < 1:
        raise TrainingInputError(f"a search budget of {n_trials} trials cannot train a model; use at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dtrain, dvalid = data.dmatrix("train", cfg.nthread), data.dmatrix("validation", cfg.nthread)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=cfg.pruning_warmup_rounds),
    )

    def objective(trial: optuna.Trial) -> float:
        params = base_params(cfg) | suggest(trial, cfg.search_space)
        pruned: optuna.TrialPruned | None = None
        with mlflow.start_run(nested=True, run_name=f"trial-{trial.number:03d}"):
            mlflow.set_tags({TAG_ROLE: "trial", "trial_number": str(trial.number)})
            mlflow.log_params(trial.params)
            evals_log: dict = {}
            started = time.perf_counter()
            try:
                booster = xgb.train(
                    params,
                    dtrain,
                    num_boost_round=cfg.num_boost_round,
                    evals=[(dvalid, "validation")],
                    early_stopping_rounds=cfg.early_stopping_rounds,
                    callbacks=[_pruning_callback(trial, cfg.pruning_warmup_rounds)],
                    evals_result=evals_log,
                    verbose_eval=False,
                )
            except optuna.TrialPruned as err:
                # A pruned trial is a normal outcome: its run ends FINISHED, tagged PRUNED.
                mlflow.set_tag("trial_state", "PRUNED")
                mlflow.log_metric("pruned_at_round", len(evals_log.get("validation", {}).get("logloss", [])))
                pruned = err
            else:
                best = booster.best_iteration
                metrics = {
                    "val_logloss": evals_log["validation"]["logloss"][best],
                    "val_auc": evals_log["validation"]["auc"][best],
                    "best_iteration": best,
                    "fit_seconds": time.perf_counter() - started,
                }
                mlflow.log_metrics(metrics)
                mlflow.set_tag("trial_state", "COMPLETE")
                trial.set_user_attr("best_iteration", best)
                trial.set_user_attr("val_auc", metrics["val_auc"])
        if pruned is not None:
            raise pruned
        return metrics["val_logloss"]

    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, gc_after_trial=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TrainingInputError(
            f"no trial completed within the budget ({n_trials} trials, {timeout_s:.0f}s)"
        )
    best = study.best_trial
    return {
        "params": dict(best.params),
        "val_logloss": best.value,
        "val_auc": best.user_attrs["val_auc"],
        "best_iteration": best.user_attrs["best_iteration"],
        "trial_number": best.number,
        "n_trials": len(study.trials),
        "n_complete": len(complete),
        "n_pruned": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED),
    }


def fit_final(data: TrainingData, cfg: TrainingConfig, params: dict[str, Any]) -> xgb.Booster:
    """Train on the train split with early stopping on validation; keep the best rounds only."""
    import xgboost as xgb

    booster = xgb.train(
        base_params(cfg) | params,
        data.dmatrix("train", cfg.nthread),
        num_boost_round=cfg.num_boost_round,
        evals=[(data.dmatrix("validation", cfg.nthread), "validation")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1]


def fit_fixed(data: TrainingData, cfg: TrainingConfig, params: dict[str, Any], rounds: int) -> xgb.Booster:
    """Train exactly ``rounds`` rounds (reproduction of a recorded model)."""
    import xgboost as xgb

    return xgb.train(base_params(cfg) | params, data.dmatrix("train", cfg.nthread), num_boost_round=rounds)


def predict(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    return booster.inplace_predict(matrix)


# --------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------
def importance_plot(booster: xgb.Booster, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = booster.get_score(importance_type="total_gain")
    items = sorted(gains.items(), key=lambda kv: kv[1])[-25:]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#3b7dd8")
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance (total gain)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reference_sample(data: TrainingData, booster: xgb.Booster, rows: int, seed: int) -> pd.DataFrame:
    """Training features (raw values), label and the model's score, for drift checks later."""
    frame = data.train_frame
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed).sort_values("flight_key")
    out = sample[list(data.spec.features)].reset_index(drop=True).copy()
    out["prediction"] = predict(booster, data.spec.encode_frame(sample))
    out[data.spec.label] = sample[data.spec.label].to_numpy()
    out["flight_date"] = sample["flight_date"].astype(str).to_numpy()
    return out


def log_model(booster: xgb.Booster, data: TrainingData, workdir: Path):
    """``mlflow.xgboost.log_model`` with signature, input example and the feature spec."""
    import importlib.metadata

    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    spec_path = workdir / SPEC_FILE
    spec_path.write_text(data.spec.to_json())
    example = pd.DataFrame(data.x_valid[:5], columns=list(data.spec.features))
    signature = infer_signature(example, predict(booster, data.x_valid[:5]))
    requirements = [
        f"{p}=={importlib.metadata.version(p)}" for p in ("xgboost", "numpy", "pandas", "scikit-learn")
    ]
    return mlflow.xgboost.log_model(
        booster,
        name="model",
        signature=signature,
        input_example=example,
        extra_files=[str(spec_path)],
        pip_requirements=requirements,
    )


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="mlp-train-")
