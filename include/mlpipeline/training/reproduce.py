"""Rebuild a registered model from what was recorded and check its predictions on the golden set.

Recorded: the dataset (by version, checked against the content hash tagged on the model),
the best parameters and the number of boosting rounds (run params), the seed and the
training settings hash, the code version (git SHA). The rebuilt model is trained with the
same parameters for the same number of rounds and scored on the golden set next to the
registered one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpipeline.data import datasets
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import get_pipeline_config
from mlpipeline.training import tracking

TOLERANCE = 1e-6


@dataclass
class Reproduction:
    model: str
    version: str
    dataset_version: str
    golden_version: str
    golden_rows: int
    max_abs_diff: float
    matches: bool
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def reproduce(model_name: str, version: str | int, lake: Lake | None = None) -> Reproduction:
    import mlflow
    import numpy as np

    from mlpipeline.serving.model import load_model_version
    from mlpipeline.training import train

    cfg = get_pipeline_config()
    lake = lake or Lake.from_settings()
    tracking.connect()
    client = mlflow.MlflowClient()
    mv = client.get_model_version(model_name, str(version))
    run = client.get_run(mv.run_id)
    tags, params = mv.tags, run.data.params
    notes: list[str] = []

    dataset_version = tags[tracking.TAG_DATASET_VERSION]
    manifest, frames = datasets.load_dataset(lake, tags[tracking.TAG_DATASET], dataset_version, verify=True)
    if manifest["content_hash"] != tags[tracking.TAG_DATASET_HASH]:
        raise datasets.DatasetError(
            f"dataset {dataset_version} now hashes to {manifest['content_hash']}, but model v{version} was "
            f"trained on {tags[tracking.TAG_DATASET_HASH]}: the recorded data is gone"
        )
    current_sha = datasets.code_version()["git_sha"]
    if current_sha != tags.get(tracking.TAG_GIT_SHA):
        notes.append(f"code version differs: model {tags.get(tracking.TAG_GIT_SHA)}, now {current_sha}")
    if cfg.fingerprint() != tags.get(tracking.TAG_SETTINGS_HASH):
        notes.append("pipeline settings differ from the recorded ones (training knobs may have changed)")

    best = {k.removeprefix("best_"): _number(v) for k, v in params.items() if k.startswith("best_")}
    rounds = int(params["final_num_boost_round"])
    tcfg = cfg.training.model_copy(update={"seed": int(tags.get(tracking.TAG_SEED, cfg.training.seed))})
    data = train.prepare_data(manifest, frames)
    rebuilt = train.fit_fixed(data, tcfg, best, rounds)

    golden_version = tags.get(tracking.TAG_GOLDEN) or ""
    if not golden_version:
        raise datasets.DatasetError(f"model v{version} records no golden set version to compare on")
    _, golden = datasets.load_golden(lake, cfg.golden.name, golden_version)
    registered = load_model_version(model_name, version)
    matrix = registered.spec.encode_frame(golden)
    diff = float(np.max(np.abs(registered.score_matrix(matrix) - rebuilt.inplace_predict(matrix))))
    return Reproduction(
        model=model_name,
        version=str(version),
        dataset_version=dataset_version,
        golden_version=golden_version,
        golden_rows=len(golden),
        max_abs_diff=diff,
        matches=diff <= TOLERANCE,
        notes=notes,
    )


def _number(value: str) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() and "." not in value else number
