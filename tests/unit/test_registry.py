"""The champion compare-and-set, on a real MLflow registry (a local SQLite store, no server)."""

from __future__ import annotations

import mlflow
import pytest

from mlpipeline.deployment import registry

MODEL = "cas_test"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for _ in range(3):
        client.create_model_version(MODEL, source=str(root / "artifacts"), run_id=None)
    return client


def _alias(client, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def test_compare_and_set_moves_only_from_the_expected_champion(client):
    # no champion yet: the first promotion expects none
    assert registry.current_champion(client, MODEL) is None
    assert registry.compare_and_set_champion(client, MODEL, "1", None) is None
    assert _alias(client, registry.CHAMPION) == "1"
    assert _alias(client, registry.PREVIOUS) is None

    # a decision taken against v1 moves v1 -> v2 and keeps v1 reachable
    assert registry.compare_and_set_champion(client, MODEL, "2", "1") == "1"
    assert (_alias(client, registry.CHAMPION), _alias(client, registry.PREVIOUS)) == ("2", "1")

    # a retry of the same move changes nothing and reports the same origin
    assert registry.compare_and_set_champion(client, MODEL, "2", "1") == "1"
    assert (_alias(client, registry.CHAMPION), _alias(client, registry.PREVIOUS)) == ("2", "1")

    # a stale decision (taken against v1, the champion is v2 now) is refused: nothing moves
    with pytest.raises(registry.ChampionChangedError, match=r"champion of cas_test is v2, but .* against v1"):
        registry.compare_and_set_champion(client, MODEL, "3", "1")
    assert (_alias(client, registry.CHAMPION), _alias(client, registry.PREVIOUS)) == ("2", "1")

    # an unknown version raises before anything moves
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.compare_and_set_champion(client, MODEL, "9", "2")
    assert _alias(client, registry.CHAMPION) == "2"
