"""The model server: strict validation, hot reload, token, prediction log, engineering check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from ports import free_port
from serving_fixtures import predict_load, request_rows, save_model

from mlpipeline.lake import Lake
from mlpipeline.serving import location
from mlpipeline.serving.prediction_log import read_day
from mlpipeline.settings import load_settings

TOKEN = "test-admin-token"
MODEL = "flight_delay"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"1": save_model(root / "v1", rounds=20, seed=0), "2": save_model(root / "v2", rounds=40, seed=1)}


def deploy(lake: Lake, model_dirs, version: str) -> None:
    location.export_model_dir(lake, MODEL, version, model_dirs[version], {"source": "test"})
    location.point_to(lake, MODEL, version, reason="test")


@pytest.fixture
def served(tmp_path, model_dirs):
    """An app (in-process, lifespan running) serving v1 from a fresh lake."""
    from fastapi.testclient import TestClient

    from mlpipeline.serving.app import create_app

    lake = Lake.from_uri(f"file://{tmp_path / 'lake'}")
    deploy(lake, model_dirs, "1")
    settings = load_settings(
        {
            "MLP_STATE_DIR": str(tmp_path / "state"),
            "MLP_SERVING_ADMIN_TOKEN": TOKEN,
            "MLP_SERVING_POLL_S": "0",
        }
    )
    app = create_app(settings, lake=lake, model_name=MODEL)
    with TestClient(app) as client:
        yield client, lake, app
    # leaving the block ran the shutdown: the prediction log is flushed


ROWS = request_rows(20)


def test_predict_one_and_batch(served):
    client, _, _ = served
    one = client.post("/predict", json={"row": ROWS[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == "1"
    assert body["request_id"]
    assert 0 < body["predictions"][0]["score"] < 1
    assert body["predictions"][0]["label"] in (0, 1)
    batch = client.post("/predict", json={"rows": ROWS, "request_date": "2013-01-15"})
    assert batch.status_code == 200
    assert len(batch.json()["predictions"]) == len(ROWS)
    health = client.get("/health").json()
    assert health == health | {"model": MODEL, "version": "1", "ready": True}


def _bad(**changes):
    row = dict(ROWS[0])
    for key, value in changes.items():
        if value is ...:
            row.pop(key)
        else:
            row[key] = value
    return {"row": row}


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        (_bad(distance="far"), "distance", "expected a number"),
        (_bad(carrier=7), "carrier", "expected a string category"),
        (_bad(dest=...), "dest", "field required"),
        (_bad(carrier="ZZ"), "carrier", "unknown category 'ZZ'"),
        (_bad(month=1.5), "month", "expected a whole number"),
        (_bad(distance=None), "distance", "must not be null"),
        (_bad(wingspan=30), "wingspan", "extra field not permitted"),
        ({"row": ROWS[0], "priority": "high"}, "priority", "extra field not permitted"),
        ({"rows": []}, "rows", "non-empty list"),
        ({"nothing": 1}, "nothing", "extra field not permitted"),
    ],
)
def test_bad_input_is_422_naming_the_field(served, payload, field, message):
    client, _, _ = served
    response = client.post("/predict", json=payload)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == field
    assert message in detail["msg"]


def test_nan_malformed_and_huge_bodies(served):
    client, _, _ = served
    raw = json.dumps({"row": ROWS[0]}).replace('"temp": ', '"temp": NaN, "x": ', 1)
    nan_body = json.dumps({"row": {**ROWS[0], "distance": float("nan")}})
    response = client.post("/predict", content=nan_body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "finite" in response.json()["detail"][0]["msg"]
    assert (
        client.post("/predict", content=raw[:-5], headers={"content-type": "application/json"}).status_code
        == 422
    )
    huge = json.dumps({"rows": [ROWS[0]] * 8000})
    response = client.post("/predict", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    metrics = client.get("/metrics").text
    assert 'mlp_errors_total{reason="too_large"} 1.0' in metrics


def test_reload_needs_the_token_and_survives_bad_versions(served, model_dirs, tmp_path):
    client, lake, _ = served
    assert client.post("/admin/reload").status_code == 403
    assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    missing = client.post("/admin/reload", json={"version": "9"}, headers=auth)
    assert missing.status_code == 409
    assert "not exported" in missing.json()["detail"]
    # A corrupt export: the booster file is garbage.
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for item in model_dirs["1"].rglob("*"):
        if item.is_file():
            target = corrupt / item.relative_to(model_dirs["1"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not a model" if item.name == "model.ubj" else item.read_bytes())
    location.export_model_dir(lake, MODEL, "3", corrupt, {})
    bad = client.post("/admin/reload", json={"version": "3"}, headers=auth)
    assert bad.status_code == 409
    assert "corrupt" in bad.json()["detail"]
    assert client.get("/health").json()["version"] == "1"
    assert client.post("/predict", json={"row": ROWS[0]}).json()["model_version"] == "1"
    deploy(lake, model_dirs, "2")
    ok = client.post("/admin/reload", headers=auth)
    assert ok.status_code == 200
    assert ok.json()["version"] == "2"
    assert client.get("/health").json()["version"] == "2"


def test_prediction_log_is_written_with_features(served):
    client, lake, app = served
    for row in ROWS[:7]:
        assert client.post("/predict", json={"row": row, "request_date": "2013-01-16"}).status_code == 200
    app.state.predictions.flush()
    logged = read_day(lake, "2013-01-16")
    assert len(logged) == 7
    assert set(logged["flight_key"]) == {r["flight_key"] for r in ROWS[:7]}
    assert {"score", "model_version", "latency_ms", "request_id", "ts", "carrier", "distance"} <= set(
        logged.columns
    )


def test_lake_outage_spools_and_catches_up(served):
    client, lake, app = served
    log = app.state.predictions
    blocker = Path(lake.path("serving", "predictions", "dt=2013-01-17"))
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the partition directory should be: writes fail")
    for row in ROWS[:5]:
        assert client.post("/predict", json={"row": row, "request_date": "2013-01-17"}).status_code == 200
    log.flush()
    assert log.spooled == 5
    assert "mlp_prediction_log_spooled_rows 5.0" in client.get("/metrics").text
    blocker.unlink()
    log.flush()
    assert log.spooled == 0
    assert len(read_day(lake, "2013-01-17")) == 5
    assert log.lost == 0
    assert "mlp_prediction_log_lost_rows 0.0" in client.get("/metrics").text


def test_no_model_is_503(tmp_path):
    from fastapi.testclient import TestClient

    from mlpipeline.serving.app import create_app

    settings = load_settings({"MLP_STATE_DIR": str(tmp_path / "state"), "MLP_SERVING_POLL_S": "0"})
    app = create_app(settings, lake=Lake.from_uri(f"file://{tmp_path / 'lake'}"), model_name=MODEL)
    with TestClient(app) as client:
        assert client.get("/health").json()["ready"] is False
        response = client.post("/predict", json={"row": ROWS[0]})
        assert response.status_code == 503
        assert "nothing deployed yet" in response.json()["detail"]


@pytest.fixture
def server_process(tmp_path, model_dirs):
    """The real server process (`python -m mlpipeline.serving`) on a free port."""
    lake = Lake.from_uri(f"file://{tmp_path / 'lake'}")
    deploy(lake, model_dirs, "1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_")}
    env.update(
        {
            "MLP_STATE_DIR": str(tmp_path / "state"),
            "MLP_LAKE_URI": lake.root_uri,
            "MLP_SERVING_PORT": str(port),
            "MLP_SERVING_ADMIN_TOKEN": TOKEN,
            "MLP_SERVING_POLL_S": "0.5",
            "MLP_SERVING_LOG_FLUSH_S": "60",  # only shutdown flushes in these tests
            "MLP_SERVING_LOG_FLUSH_ROWS": "100000",
        }
    )
    url, proc = _start_server(env, tmp_path / "server.log")
    yield url, lake, proc, env
    if proc.poll() is None:
        proc.kill()


def _start_server(env: dict[str, str], log_path: Path):
    """``python -m mlpipeline.serving`` with ``env``; returns (url, process) once it is ready."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipeline.serving"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    url = f"http://127.0.0.1:{env['MLP_SERVING_PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).json().get("ready"):
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(log_path.read_text())


def test_hot_swap_under_load_fails_no_request(server_process, model_dirs):
    url, lake, _proc, _env = server_process
    deploy(lake, model_dirs, "2")
    location.point_to(lake, MODEL, "1")
    failures, versions, done = [], set(), threading.Event()

    def hammer():
        with httpx.Client(base_url=url, timeout=5) as client:
            i = 0
            while not done.is_set():
                response = client.post(
                    "/predict", json={"row": ROWS[i % len(ROWS)], "request_date": "2013-01-18"}
                )
                i += 1
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    versions.add(response.json()["model_version"])

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for version in ["2", "1", "2", "1", "2"]:
        time.sleep(0.4)
        assert (
            httpx.post(f"{url}/admin/reload", json={"version": version}, headers=auth, timeout=30).status_code
            == 200
        )
    location.point_to(lake, MODEL, "1")  # the poller picks up a pointer change without a call
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["version"] != "1" and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    for worker in workers:
        worker.join()
    assert failures == []
    assert versions == {"1", "2"}
    assert httpx.get(f"{url}/health").json()["version"] == "1"


def test_sigterm_flushes_every_logged_prediction(server_process):
    url, lake, proc, _env = server_process
    with httpx.Client(base_url=url, timeout=5) as client:
        for i in range(120):
            assert (
                client.post(
                    "/predict", json={"row": ROWS[i % len(ROWS)], "request_date": "2013-01-19"}
                ).status_code
                == 200
            )
    assert len(read_day(lake, "2013-01-19")) == 0  # still buffered
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert len(read_day(lake, "2013-01-19")) == 120


def test_sigkill_under_load_loses_no_answered_prediction(server_process, tmp_path):
    """Killed with SIGKILL while four clients send: the next start writes what the journal kept;
    every answered request is in the log exactly once, and nothing unanswered is invented."""
    url, lake, proc, env = server_process
    with predict_load(url, ROWS, "2013-01-21", clients=4, batch=3) as load:
        load.wait_for(150, timeout_s=120)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    answered = load.answered
    assert len(read_day(lake, "2013-01-21")) == 0  # nothing had been flushed (flush_s 60)

    url, again = _start_server(env, tmp_path / "server.log")
    try:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        logged = read_day(lake, "2013-01-21")
        assert set(answered) <= set(logged["request_id"])  # nothing answered is lost
        assert len(logged) == len(logged.drop_duplicates(["request_id", "flight_key"]))  # none twice
        assert len(set(logged["request_id"])) <= len(answered) + 4  # at most one in flight per client
        assert f"mlp_prediction_log_recovered_rows {float(len(logged))}" in metrics
    finally:
        again.kill()
        again.wait(timeout=30)
    # The recovered segment is gone: a third start recovers nothing more.
    url, third = _start_server(env, tmp_path / "server.log")
    try:
        assert "mlp_prediction_log_recovered_rows 0.0" in httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=30)
    assert len(read_day(lake, "2013-01-21")) == len(logged)


def test_engineering_check_uses_the_server_path(model_dirs):
    from mlpipeline.serving.engineering import measure

    report = measure(model_dirs["2"], ROWS, repeats=300)
    assert report.batch_rows == len(ROWS)
    assert 0 < report.single_row_p50_ms <= report.single_row_p99_ms < 50
    assert 0 < report.single_row_cpu_p99_ms < 50
    assert report.model_bytes > 1000
