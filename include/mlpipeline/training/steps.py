"""The ``model_training`` steps: which dataset, train (search + final fit), register.

Each step is idempotent per Airflow run: a retried training step reuses a finished parent
run of the same Airflow run, and registration looks the version up by the run's tag before
creating one, so a retry never registers a second version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.data import datasets
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config
from mlpipeline.training import ledger, tracking
from mlpipeline.training.train import TrainingInputError

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


class DatasetRefusedError(TrainingInputError):
    """The dataset version may not be trained on (unknown, unpublished, overlapping the golden set)."""


# --------------------------------------------------------------------------------------
# Which dataset
# --------------------------------------------------------------------------------------
def requested_version(
    triggering_events: dict | None, params: dict | None, lake: Lake | None = None, manual: bool = False
) -> str:
    """The dataset version a run asked for by param, event or (manual) the newest published one."""
    selection = select_version(triggering_events, params, lake, manual=manual)
    if selection.version is None:
        raise DatasetRefusedError(selection.nothing_to_do or "no dataset version")
    return selection.version


def announced_versions(triggering_events: dict | None) -> list[str]:
    """The dataset versions the run's asset events name (Airflow may batch several in one run)."""
    events = []
    for asset_events in (triggering_events or {}).values():
        events.extend(asset_events)
    return sorted(
        {e.extra.get("version") for e in events if getattr(e, "extra", None) and e.extra.get("version")}
    )


def select_version(
    triggering_events: dict | None,
    params: dict | None,
    lake: Lake | None = None,
    manual: bool = False,
    cfg: PipelineConfig | None = None,
) -> ledger.Selection:
    """Which version this run trains, and which older published versions it supersedes.

    * param/conf ``dataset_version``: exactly that version (an operator's retrain);
    * otherwise the newest of the versions the asset events announced and the versions the
      training ledger still lists as pending (:mod:`mlpipeline.training.ledger`); older pending
      versions are superseded by it. Nothing left (another run trained them): ``nothing_to_do``;
    * an asset-triggered run without any announced or pending version is refused; a manual run
      with the field empty retrains the newest published version.
    """
    params = params or {}
    cfg = cfg or get_pipeline_config()
    if params.get("dataset_version"):
        return ledger.Selection(str(params["dataset_version"]).strip())
    lake = lake or Lake.from_settings()
    name, model = cfg.dataset.name, cfg.training.model_name
    announced = announced_versions(triggering_events)
    done = ledger.recorded(lake, model)
    selection = ledger.select(announced, ledger.pending(lake, name, model, done), done)
    if selection.version is not None or not manual:
        if selection.version is None and not announced:
            raise DatasetRefusedError(
                "no dataset version: trigger with param dataset_version (YYYY-MM-DD) or from a "
                "training_dataset asset event"
            )
        return selection
    published = lake.committed_partitions(locations.datasets_root(name), key="ds")
    if not published:
        raise DatasetRefusedError(
            f"no published version of dataset {name}: run dataset_generation first, or name a version"
        )
    log.info("no dataset_version given and none pending: retraining the newest published %s", published[-1])
    return ledger.Selection(published[-1])


def check_selected(version: str, run_id: str, lake: Lake | None = None) -> dict[str, Any]:
    """:func:`check_dataset`; a published version it refuses gets ledger entry *refused*.

    So a refused version (e.g. its window overlaps the golden set) does not stay pending and
    block every later run; the next run trains the newest version that is left.
    """
    lake = lake or Lake.from_settings()
    cfg = get_pipeline_config()
    try:
        return check_dataset(version, lake, cfg)
    except DatasetRefusedError as err:
        if lake.is_committed(locations.dataset_dir(cfg.dataset.name, version)):
            ledger.record(
                lake, cfg.training.model_name, version, ledger.REFUSED, reason=str(err), airflow_run_id=run_id
            )
        raise


def record_superseded(selection: ledger.Selection, run_id: str, lake: Lake | None = None) -> None:
    """Ledger entries for the versions this run's newer version supersedes."""
    lake = lake or Lake.from_settings()
    model = get_pipeline_config().training.model_name
    for version in selection.superseded:
        ledger.record(lake, model, version, ledger.SUPERSEDED, by=selection.version, airflow_run_id=run_id)
        log.info("dataset %s superseded by %s (not trained on its own)", version, selection.version)


def record_trained(registered: dict[str, Any], run_id: str, lake: Lake | None = None) -> None:
    """The ledger entry of the version this run trained and registered."""
    lake = lake or Lake.from_settings()
    ledger.record(
        lake,
        registered["model"],
        registered["dataset_version"],
        ledger.TRAINED,
        model_version=registered["version"],
        mlflow_run_id=registered["run_id"],
        airflow_run_id=run_id,
    )


def pending_after(version: str, lake: Lake | None = None) -> list[str]:
    """Published versions newer than ``version`` still waiting to be trained (a catch-up run's work)."""
    cfg = get_pipeline_config()
    waiting = ledger.pending(lake or Lake.from_settings(), cfg.dataset.name, cfg.training.model_name)
    return [v for v in waiting if v > version]


def check_dataset(
    version: str, lake: Lake | None = None, cfg: PipelineConfig | None = None
) -> dict[str, Any]:
    """The manifest of a trainable version; refuses unknown versions and golden overlaps."""
    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    try:
        dt.date.fromisoformat(version)
    except ValueError:
        raise DatasetRefusedError(f"dataset version {version!r} is not a date YYYY-MM-DD") from None
    try:
        manifest = datasets.read_manifest(lake, cfg.dataset.name, version)
    except datasets.DatasetError as err:
        raise DatasetRefusedError(str(err)) from None
    start, end = (dt.date.fromisoformat(manifest["window"][k]) for k in ("start", "end"))
    golden = datasets.current_golden(lake, cfg.golden.name)
    if golden is not None and golden.overlaps(start, end):
        raise DatasetRefusedError(
            f"dataset {version} (window {start}..{end}) overlaps golden set {golden.version} "
            f"({golden.start}..{golden.end}): training on it would leak evaluation data"
        )
    if (manifest.get("golden") or {}).get("overlaps_window"):
        raise DatasetRefusedError(f"dataset {version}'s manifest records an overlap with its golden set")
    return manifest


# --------------------------------------------------------------------------------------
# Train
# --------------------------------------------------------------------------------------
def _find_finished_training_run(experiment_id: str, airflow_tags: dict[str, str]):
    import mlflow

    if not airflow_tags.get(tracking.TAG_RUN_ID):
        return None
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.{tracking.TAG_RUN_ID} = '{airflow_tags[tracking.TAG_RUN_ID]}' "
            f"and tags.{tracking.TAG_ROLE} = 'training' and attributes.status = 'FINISHED'"
        ),
        output_format="list",
        max_results=1,
    )
    return runs[0] if runs and runs[0].data.tags.get("model_uri") else None


def train_candidate(
    version: str,
    context: dict[str, Any] | None = None,
    n_trials: int | None = None,
    cfg: PipelineConfig | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Search, fit and log a model on dataset ``version`` in one MLflow parent run."""
    import mlflow

    from mlpipeline.training import train

    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    tcfg = cfg.training
    n_trials = tcfg.n_trials if n_trials is None else int(n_trials)
    if n_trials < 1:
        raise TrainingInputError(f"a search budget of {n_trials} trials cannot train a model; use at least 1")
    manifest = check_dataset(version, lake, cfg)
    try:
        manifest, frames = datasets.load_dataset(lake, cfg.dataset.name, version, verify=True)
    except datasets.DatasetError as err:
        raise DatasetRefusedError(str(err)) from None
    data = train.prepare_data(manifest, frames)

    uri = tracking.connect()
    experiment = mlflow.set_experiment(tcfg.experiment)
    airflow = tracking.airflow_tags(context)
    previous = _find_finished_training_run(experiment.experiment_id, airflow)
    if previous is not None:
        log.info("reusing finished training run %s of this Airflow run", previous.info.run_id)
        return _summary(previous, uri)

    started = time.perf_counter()
    with (
        train.scratch_dir() as tmp,
        mlflow.start_run(
            run_name=f"train {manifest['version']}", tags=_run_tags(manifest, lake, cfg, airflow)
        ) as run,
    ):
        workdir = Path(tmp)
        mlflow.log_input(_mlflow_dataset(manifest, frames["train"], lake, cfg), context="training")
        booster, best = _search_and_fit(data, frames, tcfg, n_trials)
        _log_evaluation_artifacts(booster, data, best, manifest, workdir)
        reference_uri = _keep_reference_sample(booster, data, tcfg, run.info.run_id, lake, workdir)
        info = train.log_model(booster, data, workdir)
        mlflow.set_tags({"model_uri": info.model_uri, tracking.TAG_REFERENCE: reference_uri})
        mlflow.log_metric("task_seconds", time.perf_counter() - started)
    finished = mlflow.get_run(run.info.run_id)
    return _summary(finished, uri)


def _run_tags(
    manifest: dict[str, Any], lake: Lake, cfg: PipelineConfig, airflow: dict[str, str]
) -> dict[str, str]:
    """Lineage tags of the training run: dataset, window, golden set, code, settings, Airflow."""
    golden = datasets.current_golden(lake, cfg.golden.name)
    override = (manifest.get("quality") or {}).get("override")
    return {
        **(
            {
                tracking.TAG_QUALITY_OVERRIDE: json.dumps(
                    {k: override.get(k) for k in ("accept_days", "reason", "accepted_failures")},
                    sort_keys=True,
                )
            }
            if override
            else {}
        ),
        tracking.TAG_ROLE: "training",
        tracking.TAG_DATASET: manifest["name"],
        tracking.TAG_DATASET_VERSION: manifest["version"],
        tracking.TAG_DATASET_HASH: manifest["content_hash"],
        tracking.TAG_WINDOW_START: manifest["window"]["start"],
        tracking.TAG_WINDOW_END: manifest["window"]["end"],
        tracking.TAG_TRAINED_END: datasets.trained_end(manifest),
        tracking.TAG_VALIDATION_SPLIT: datasets.validation_split_label(manifest),
        tracking.TAG_GOLDEN: golden.version if golden else "",
        tracking.TAG_GIT_SHA: datasets.code_version()["git_sha"],
        tracking.TAG_SETTINGS_HASH: cfg.fingerprint(),
        tracking.TAG_SEED: str(cfg.training.seed),
        **airflow,
    }


def _search_and_fit(data, frames: dict[str, Any], tcfg, n_trials: int):
    """Optuna search (nested runs), then the final fit on the best parameters; logged to the run."""
    import mlflow

    from mlpipeline.training import train

    mlflow.log_params(
        {
            "n_trials": n_trials,
            "timeout_s": tcfg.timeout_s,
            "num_boost_round_max": tcfg.num_boost_round,
            "early_stopping_rounds": tcfg.early_stopping_rounds,
            "rows_train": len(frames["train"]),
            "rows_validation": len(frames["validation"]),
            "rows_recent_held_out": len(frames["recent"]) if "recent" in frames else 0,
        }
    )
    best = train.search(data, tcfg, n_trials, tcfg.timeout_s)
    mlflow.log_params({f"best_{k}": v for k, v in best["params"].items()})
    mlflow.log_metrics(
        {
            "search_best_val_logloss": best["val_logloss"],
            "search_best_val_auc": best["val_auc"],
            "search_trials": best["n_trials"],
            "search_pruned": best["n_pruned"],
        }
    )
    fit_started = time.perf_counter()
    booster = train.fit_final(data, tcfg, best["params"])
    fit_seconds = time.perf_counter() - fit_started
    rounds = booster.num_boosted_rounds()
    mlflow.log_metrics({"final_rounds": rounds, "final_fit_seconds": fit_seconds})
    mlflow.log_params({"final_num_boost_round": rounds})
    return booster, best


def _log_evaluation_artifacts(
    booster, data, best: dict[str, Any], manifest: dict[str, Any], workdir: Path
) -> None:
    """Validation metrics, calibration table and plot, importance, best trial, manifest."""
    import mlflow

    from mlpipeline.training import train
    from mlpipeline.training.metrics import calibration_png, calibration_table, classification_metrics

    scores = train.predict(booster, data.x_valid)
    metrics = classification_metrics(data.y_valid, scores)
    mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    table = calibration_table(data.y_valid, scores)
    train.write_json(workdir / "calibration.json", table)
    (workdir / "calibration.png").write_bytes(calibration_png({"model": table}, "Calibration (validation)"))
    train.importance_plot(booster, workdir / "feature_importance.png")
    train.write_json(workdir / "best_trial.json", best)
    train.write_json(workdir / "dataset_manifest.json", {k: v for k, v in manifest.items() if k != "columns"})
    for name in (
        "calibration.json",
        "calibration.png",
        "feature_importance.png",
        "best_trial.json",
        "dataset_manifest.json",
    ):
        mlflow.log_artifact(
            str(workdir / name), artifact_path="evaluation" if "calibration" in name else None
        )


def _keep_reference_sample(booster, data, tcfg, run_id: str, lake: Lake, workdir: Path) -> str:
    """The reference sample monitoring compares traffic with: in the lake and on the run; its URI."""
    import mlflow

    from mlpipeline.training import train

    reference = train.reference_sample(data, booster, tcfg.reference_sample_rows, tcfg.seed)
    reference_path = locations.reference_sample(tcfg.model_name, run_id)
    lake.write_bytes(reference_path, reference.to_parquet(index=False))
    reference.to_parquet(workdir / "reference.parquet", index=False)
    mlflow.log_artifact(str(workdir / "reference.parquet"), artifact_path="reference")
    return lake.uri(reference_path)


def _mlflow_dataset(manifest: dict[str, Any], train_frame, lake: Lake, cfg: PipelineConfig):
    """The dataset as an MLflow input: digest from the manifest hash, source = its lake path."""
    import mlflow

    digest = manifest["content_hash"].split(":", 1)[-1][:32]  # MLflow keeps at most 36 characters
    frame = train_frame.copy()
    frame["flight_date"] = frame["flight_date"].astype(str)
    return mlflow.data.from_pandas(
        frame,
        source=lake.uri(datasets.dataset_dir(cfg.dataset.name, manifest["version"])),
        targets=manifest.get("label", "is_delayed"),
        name=f"{manifest['name']}@{manifest['version']}",
        digest=digest,
    )


def _summary(run, uri: str) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "model_uri": run.data.tags["model_uri"],
        "dataset_version": run.data.tags.get(tracking.TAG_DATASET_VERSION),
        "val_roc_auc": metrics.get("val_roc_auc"),
        "val_log_loss": metrics.get("val_log_loss"),
        "run_url": tracking.run_url(run.info.run_id, run.info.experiment_id, uri),
    }


# --------------------------------------------------------------------------------------
# Register
# --------------------------------------------------------------------------------------
def _version_for_airflow_run(client, model_name: str, airflow_run_id: str):
    if not airflow_run_id:
        return None
    found = client.search_model_versions(
        f"name='{model_name}' and tags.{tracking.TAG_RUN_ID}='{airflow_run_id}'"
    )
    return max(found, key=lambda v: int(v.version)) if found else None


def verify_loadable(model_name: str, version: str | int) -> None:
    """Load the version's model and feature spec: an alias never points at missing artifacts."""
    from mlpipeline.serving.model import ModelLoadError, load_model_version

    try:
        loaded = load_model_version(model_name, version)
    except ModelLoadError as err:
        raise RuntimeError(f"model {model_name} version {version} does not load: {err}") from err
    log.info("verified %s v%s: %d features", model_name, version, len(loaded.spec.features))


def register_candidate(
    trained: dict[str, Any], context: dict[str, Any] | None = None, cfg: PipelineConfig | None = None
) -> dict[str, Any]:
    """Register the trained model as a new version (once per Airflow run) with alias challenger."""
    import mlflow

    cfg = cfg or get_pipeline_config()
    uri = tracking.connect()
    client = mlflow.MlflowClient()
    model_name = cfg.training.model_name
    run = client.get_run(trained["run_id"])
    airflow = tracking.airflow_tags(context)
    version = _version_for_airflow_run(client, model_name, airflow.get(tracking.TAG_RUN_ID, ""))
    if version is None:
        try:
            client.get_registered_model(model_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(
                model_name, description="Predicts whether a flight arrives more than 15 minutes late."
            )
        keep = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        tags = {k: v for k, v in keep.items() if k != tracking.TAG_ROLE} | airflow
        created = mlflow.register_model(
            trained["model_uri"], model_name, tags=tags, await_registration_for=120
        )
        version = _wait_ready(client, model_name, created.version)
    else:
        log.info("version %s already registered for this Airflow run: reusing it", version.version)
    verify_loadable(model_name, version.version)
    moved = _move_challenger_forward(
        client, model_name, version.version, run.data.tags.get(tracking.TAG_WINDOW_END)
    )
    return {
        "challenger_alias_moved": moved,
        "model": model_name,
        "version": str(version.version),
        "run_id": run.info.run_id,
        "dataset_version": run.data.tags.get(tracking.TAG_DATASET_VERSION),
        "data_window_end": run.data.tags.get(tracking.TAG_WINDOW_END),
        "run_url": trained.get("run_url") or tracking.run_url(run.info.run_id, run.info.experiment_id, uri),
        "version_url": tracking.model_version_url(model_name, version.version, uri),
    }


def _move_challenger_forward(client, model_name: str, version: str, window_end: str | None) -> bool:
    """Point alias ``challenger`` at ``version`` unless it already names a model of newer data.

    Asset-triggered trainings of several dataset versions may finish out of order (a backfill):
    the challenger stays the model of the newest data window.
    """
    import mlflow

    try:
        current = client.get_model_version_by_alias(model_name, CHALLENGER)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and str(current.version) != str(version):
        current_end = current.tags.get(tracking.TAG_WINDOW_END) or ""
        if window_end and current_end > window_end:
            log.info(
                "alias %s stays on v%s (data to %s): v%s holds older data (to %s)",
                CHALLENGER, current.version, current_end, version, window_end,
            )  # fmt: skip
            return False
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return True


def _wait_ready(client, model_name: str, version: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        current = client.get_model_version(model_name, version)
        if current.status == "READY":
            return current
        if current.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model {model_name} version {version} registration ended {current.status}")
        time.sleep(1)
