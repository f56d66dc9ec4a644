"""The serving location: where deployment exports the champion and the server loads it from.

Lake layout::

    serving/models/<model>/v<N>/...      the MLflow model directory of version N (committed)
    serving/models/<model>/CURRENT       JSON pointer {"version", "directory", ...}, one atomic write

Deployment writes the version directory first (committed with ``_SUCCESS``), then swaps
``CURRENT``; the server polls ``CURRENT`` and loads what it names.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.lake import Lake, LakeError

POINTER = "CURRENT"


model_root = locations.serving_model_root


def version_dir(model: str, version: str | int) -> str:
    return f"{model_root(model)}/v{version}"


def read_pointer(lake: Lake, model: str) -> dict[str, Any] | None:
    path = f"{model_root(model)}/{POINTER}"
    return lake.read_json(path) if lake.exists(path) else None


def export_model_dir(
    lake: Lake, model: str, version: str | int, local_dir: Path, info: dict[str, Any]
) -> str:
    """Copy a local MLflow model directory to the serving location (idempotent per version)."""
    directory = version_dir(model, version)
    if lake.is_committed(directory):
        return directory
    with tempfile.TemporaryDirectory(prefix="mlp-export-") as tmp:
        bundle = Path(tmp) / "model"
        shutil.copytree(local_dir, bundle)
        (bundle / "serving_info.json").write_text(
            json.dumps({"model": model, "version": str(version), **info})
        )
        lake.publish_local_dir(directory, str(bundle), meta={"model": model, "version": str(version)})
    return directory


def point_to(lake: Lake, model: str, version: str | int, reason: str = "") -> dict[str, Any]:
    """Make ``version`` the one the server loads (atomic swap of the pointer)."""
    directory = version_dir(model, version)
    if not lake.is_committed(directory):
        raise FileNotFoundError(f"model {model} v{version} was not exported to {lake.uri(directory)}")
    pointer = {
        "model": model,
        "version": str(version),
        "directory": directory,
        "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        "reason": reason,
    }
    lake.write_json(f"{model_root(model)}/{POINTER}", pointer)
    return pointer


def fetch_version(lake: Lake, directory: str, cache_dir: Path) -> Path:
    """Download a committed model directory into ``cache_dir`` (reused when already there)."""
    commit = lake.read_commit(directory)
    target = cache_dir / directory.replace("/", "_") / commit.attempt
    if (target / ".complete").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    for name, rel in zip(commit.files, commit.file_paths(), strict=True):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(lake.read_bytes(rel))
    (target / ".complete").write_text("")
    return target


class ServedSpecError(LookupError):
    """The export of a served version holds no readable feature spec."""


def served_spec(lake: Lake, model: str, version: str):
    """Feature spec of a model version, read from its export in the serving location."""
    from mlpipeline.features import FeatureSpec
    from mlpipeline.serving.model import SPEC_PATH

    directory = version_dir(model, version)
    try:
        commit = lake.read_commit(directory)
    except LakeError as err:
        raise ServedSpecError(f"cannot read the served model's feature spec: {err}") from None
    spec_name = SPEC_PATH.as_posix()
    for name, rel in zip(commit.files, commit.file_paths(), strict=True):
        if name == spec_name:
            return FeatureSpec.from_json(lake.read_bytes(rel).decode())
    raise ServedSpecError(f"{lake.uri(directory)} holds no {spec_name}")


def served_features(lake: Lake, model: str, version: str) -> list[str]:
    """Feature list of the model version the server serves, read from its export in the lake."""
    return list(served_spec(lake, model, version).features)
