"""Moving the ``champion`` alias safely, exporting to the serving location, telling the server.

Every alias move (promotion or rollback) goes through :func:`move_champion`:

1. compare-and-set: the champion seen when the decision was taken must still be the
   champion (else :class:`ChampionChangedError`: re-evaluate). Alias-moving tasks share the
   Airflow pool ``champion_alias`` (one slot), so the check and the move cannot interleave;
2. keep the previous champion reachable (alias ``previous_champion``) and write the audit
   record (``deployments/<model>/history.jsonl``);
3. export the model directory to the serving location and swap its pointer;
4. ask the server to reload and verify it reports the new version.

Each step checks what is already done, so a retry after a crash anywhere converges.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.lake import Lake
from mlpipeline.serving import location
from mlpipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
POOL = "champion_alias"
TAG_DECISION = "deployment_decision"
TAG_REASONS = "deployment_reasons"


class ChampionChangedError(RuntimeError):
    """The champion moved since the decision was taken: evaluate again."""


class DeploymentError(RuntimeError):
    """The server did not take the new version, or a target cannot be deployed."""


def current_champion(client, model: str) -> str | None:
    import mlflow

    try:
        return str(client.get_model_version_by_alias(model, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


history_path = locations.deployment_history


def read_history(lake: Lake, model: str) -> list[dict[str, Any]]:
    path = history_path(model)
    if not lake.exists(path):
        return []
    return [json.loads(line) for line in lake.read_bytes(path).decode().splitlines() if line.strip()]


def append_history(lake: Lake, model: str, record: dict[str, Any]) -> None:
    """Append one audit record unless the same actor already recorded the same move (retry)."""
    key = (record.get("actor"), record.get("action"), record.get("from_version"), record.get("to_version"))
    for existing in read_history(lake, model):
        if (
            existing.get("actor"),
            existing.get("action"),
            existing.get("from_version"),
            existing.get("to_version"),
        ) == key:
            return
    lake.append_line(history_path(model), json.dumps(record, sort_keys=True, default=str))


def export_version(lake: Lake, model: str, version: str) -> str:
    """Download the registered version and copy it to the serving location (idempotent)."""
    from mlpipeline.serving.model import download_model_version, load_model_dir

    directory = location.version_dir(model, version)
    if lake.is_committed(directory):
        return directory
    with tempfile.TemporaryDirectory(prefix="mlp-export-") as tmp:
        local = download_model_version(model, version, tmp)
        load_model_dir(local)  # never export something the server could not load
        return location.export_model_dir(lake, model, version, Path(local), {"exported_at": _now()})


def reload_server(settings: Settings, version: str, timeout_s: float = 60) -> dict[str, Any]:
    """Ask the model server to load ``version`` and wait until ``/health`` reports it."""
    import httpx

    from mlpipeline.secrets import serving_admin_token

    token = serving_admin_token(settings)
    url = settings.serving_url
    try:
        response = httpx.post(
            f"{url}/admin/reload",
            json={"version": version},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as err:
        raise DeploymentError(f"model server {url} unreachable for reload: {err}") from None
    if response.status_code != 200:
        raise DeploymentError(f"model server refused v{version}: HTTP {response.status_code} {response.text}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/health", timeout=5).json()
        if health.get("version") == str(version):
            return health
        time.sleep(0.5)
    raise DeploymentError(
        f"model server {url} still reports v{health.get('version')} after reload to v{version}"
    )


def compare_and_set_champion(
    client, model: str, to_version: str, expected_champion: str | None
) -> str | None:
    """Alias ``champion`` → ``to_version`` if the champion is still ``expected_champion``.

    The champion it replaces keeps alias ``previous_champion``. Idempotent: when ``to_version``
    already is the champion (a retry after the move), nothing moves. Returns the version the
    move comes from (``expected_champion`` on a retry). :class:`ChampionChangedError` when
    another version became champion since the decision; an unknown ``to_version`` raises
    MLflow's error before anything moves.
    """
    client.get_model_version(model, to_version)  # raises if the version does not exist
    current = current_champion(client, model)
    if current == to_version:
        return expected_champion
    if current != expected_champion:
        raise ChampionChangedError(
            f"champion of {model} is v{current}, but the decision was taken against v{expected_champion}; "
            "re-run the evaluation"
        )
    client.set_registered_model_alias(model, CHAMPION, to_version)
    if current is not None:
        client.set_registered_model_alias(model, PREVIOUS, current)
    return current


def move_champion(
    model: str,
    to_version: str,
    expected_champion: str | None,
    action: str,
    reasons: list[str] | str,
    actor: str,
    metrics: dict[str, Any] | None = None,
    lake: Lake | None = None,
    settings: Settings | None = None,
    reload: bool = True,
) -> dict[str, Any]:
    """Make ``to_version`` the champion (compare-and-set), audit, export, reload, verify."""
    import mlflow

    from mlpipeline.training import tracking

    settings = settings or get_settings()
    lake = lake or Lake.from_settings(settings)
    tracking.connect()
    client = mlflow.MlflowClient()
    from_version = compare_and_set_champion(client, model, to_version, expected_champion)
    append_history(
        lake,
        model,
        {
            "time": _now(),
            "model": model,
            "action": action,
            "from_version": from_version,
            "to_version": to_version,
            "reasons": reasons,
            "actor": actor,
            "metrics": metrics or {},
        },
    )
    export_version(lake, model, to_version)
    location.point_to(lake, model, to_version, reason=f"{action} by {actor}")
    health = reload_server(settings, to_version) if reload else None
    return {"model": model, "from_version": from_version, "to_version": to_version, "server": health}


def tag_decision(
    model: str, version: str, decision: str, reasons: list[str], judged_on: dict[str, str] | None = None
) -> None:
    """The decision on the version's tags: outcome, reasons and (from an evaluation) which golden
    set and which recent set judged it (``evaluated_golden``, ``evaluated_recent``, ``decided_by``)."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_model_version_tag(model, version, TAG_DECISION, decision)
    client.set_model_version_tag(model, version, TAG_REASONS, "; ".join(reasons)[:4900] or "all rules passed")
    for key, value in (judged_on or {}).items():
        tag = key if key == "decided_by" else f"evaluated_{key}"
        client.set_model_version_tag(model, version, tag, str(value)[:4900])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
