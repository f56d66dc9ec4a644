"""Load a registered model and score with it: the one code path serving, evaluation and the
deployment gate share (booster on numpy arrays, features encoded by the model's spec).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.features import FeatureSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import xgboost as xgb

MODEL_FILE = "model.ubj"
SPEC_PATH = Path("extra_files") / "feature_spec.json"
INFO_FILE = "serving_info.json"


class ModelLoadError(RuntimeError):
    """A model directory or registry version is missing, incomplete or corrupt."""


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: xgb.Booster
    spec: FeatureSpec
    loaded_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    info: dict[str, Any] = field(default_factory=dict)

    def score_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for an encoded ``float32`` matrix."""
        return self.booster.inplace_predict(matrix)

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.score_matrix(self.spec.encode_frame(frame))

    def score_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Strictly validated request rows (``FeatureError`` names a bad field) to probabilities."""
        import numpy as np

        matrix = np.array([self.spec.encode_row(row) for row in rows], dtype=np.float32)
        return self.score_matrix(matrix)


def load_model_dir(path: str | Path, name: str = "", version: str = "") -> LoadedModel:
    """Load an MLflow XGBoost model directory (``model.ubj`` + ``extra_files/feature_spec.json``)."""
    import xgboost as xgb

    path = Path(path)
    model_file, spec_file = path / MODEL_FILE, path / SPEC_PATH
    for required in (model_file, spec_file):
        if not required.is_file():
            raise ModelLoadError(f"model directory {path} lacks {required.relative_to(path)}")
    info = {}
    if (path / INFO_FILE).is_file():
        info = json.loads((path / INFO_FILE).read_text())
    try:
        booster = xgb.Booster()
        booster.load_model(str(model_file))
        booster.set_param({"nthread": 1})
        spec = FeatureSpec.from_json(spec_file.read_text())
    except (xgb.core.XGBoostError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model directory {path} is corrupt: {err}") from None
    if booster.num_features() != len(spec.features):
        raise ModelLoadError(
            f"model directory {path}: booster has {booster.num_features()} features, spec {len(spec.features)}"
        )
    return LoadedModel(
        name=name or info.get("model", ""), version=str(version or info.get("version", "")), booster=booster,
        spec=spec, info=info,
    )  # fmt: skip


def download_model_version(name: str, version: str | int, dst: str | Path) -> Path:
    """Download a registered version's model directory to ``dst``."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst)))
    except Exception as err:  # MLflow raises several types for a missing version or artifact
        raise ModelLoadError(f"model {name} version {version} cannot be downloaded: {err}") from None


def load_model_version(name: str, version: str | int) -> LoadedModel:
    """Download and load a registered version (tracking URI must already be set)."""
    with tempfile.TemporaryDirectory(prefix="mlp-model-") as tmp:
        path = download_model_version(name, version, tmp)
        return load_model_dir(path, name=name, version=str(version))
