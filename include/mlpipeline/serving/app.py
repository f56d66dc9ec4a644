"""The model server: serves the champion, hot-reloads it, logs every prediction.

``POST /predict``    ``{"rows": [{feature: value, …, "flight_key"?: str}], "request_date"?: "YYYY-MM-DD"}``
                     (or ``{"row": {…}}``) → scores, labels, model version, request id.
                     Validation is strict and names the field (422); bodies over the limit → 413.
``GET /health``      model name, version, loaded-at, ready.
``GET /metrics``     Prometheus: requests, errors, latency histogram, model version, memory,
                     prediction-log counters (``…_lost_total`` must stay 0).
``POST /admin/reload`` (token) load the version the serving location names, or ``{"version": N}``.

Scoring goes straight to the booster on a numpy array built from the validated request (no
pandas on the request path). A reload loads and warms the new model, then swaps one
reference: requests in flight finish on the old model, none waits for the load.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations by name

from mlpipeline.features import FeatureError
from mlpipeline.lake import Lake
from mlpipeline.serving import location
from mlpipeline.serving.model import LoadedModel, ModelLoadError, load_model_dir
from mlpipeline.serving.prediction_log import PredictionLog
from mlpipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_ROWS = 1_000
THRESHOLD = 0.5
ROW_ID_FIELD = "flight_key"
TOP_LEVEL_FIELDS = {"rows", "row", "request_date"}


class ModelHolder:
    """The model being served; swapped whole by :meth:`reload`."""

    def __init__(self, model_name: str, lake: Lake, cache_dir: Path) -> None:
        self.model_name = model_name
        self.lake = lake
        self.cache_dir = cache_dir
        self.current: LoadedModel | None = None
        self.last_error: str = ""
        self.reloads = 0
        self._reload_lock = threading.Lock()

    def reload(self, version: str | None = None) -> LoadedModel:
        """Load ``version`` (default: the one the serving location points to), warm it, swap it in.

        On failure the serving model is untouched and :class:`ModelLoadError` is raised.
        """
        with self._reload_lock:
            try:
                if version is None:
                    pointer = location.read_pointer(self.lake, self.model_name)
                    if pointer is None:
                        raise ModelLoadError(
                            f"nothing deployed yet for {self.model_name} (no serving pointer)"
                        )
                    version = pointer["version"]
                directory = location.version_dir(self.model_name, version)
                if not self.lake.is_committed(directory):
                    raise ModelLoadError(
                        f"{self.model_name} v{version} is not exported to {self.lake.uri(directory)}"
                    )
                local = location.fetch_version(self.lake, directory, self.cache_dir)
                model = load_model_dir(local, name=self.model_name, version=str(version))
                _warm(model)
            except (ModelLoadError, OSError, ValueError, KeyError) as err:
                self.last_error = f"{type(err).__name__}: {err}"
                log.error("reload failed, still serving %s: %s", self.version or "nothing", self.last_error)
                raise ModelLoadError(self.last_error) from None
            self.current = model  # one reference swap: atomic for readers
            self.last_error = ""
            self.reloads += 1
            log.info("now serving %s v%s", self.model_name, model.version)
            return model

    @property
    def version(self) -> str:
        return self.current.version if self.current else ""


def _warm(model: LoadedModel) -> None:
    """Score once so the first real request does not pay for lazy initialisation."""
    import numpy as np

    model.score_matrix(np.zeros((1, len(model.spec.features)), dtype=np.float32))


def create_app(settings: Settings | None = None, lake: Lake | None = None, model_name: str | None = None):
    from fastapi import FastAPI

    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.secrets import serving_admin_token

    settings = settings or get_settings()
    lake = lake or Lake.from_settings(settings)
    model_name = model_name or get_pipeline_config().training.model_name
    state = Path(settings.state_dir)
    token = serving_admin_token(settings)
    holder = ModelHolder(model_name, lake, state / "serving" / "cache")
    predictions = PredictionLog(
        lake, state / "serving" / "spool", settings.serving_log_flush_rows, settings.serving_log_flush_s
    )
    metrics = ServerMetrics()
    reloader = Reloader(holder, metrics, lake, model_name, settings.serving_poll_s)

    app = FastAPI(title="mlpipeline model server", lifespan=_lifespan(reloader, predictions))
    app.state.holder = holder
    app.state.predictions = predictions
    _add_predict_route(app, holder, predictions, metrics)
    _add_operations_routes(app, holder, predictions, metrics, reloader, model_name, token)
    return app


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests_total = Counter("mlp_requests", "Prediction requests", ["status"], registry=registry)
        self.rows_total = Counter("mlp_predicted_rows", "Rows scored", registry=registry)
        self.errors_total = Counter("mlp_errors", "Requests that failed", ["reason"], registry=registry)
        self.latency = Histogram(
            "mlp_request_latency_seconds",
            "Latency of POST /predict inside the server",
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.version_gauge = Gauge("mlp_model_version", "Model version being served", registry=registry)
        self.reloads_total = Counter("mlp_model_reloads", "Model reloads", ["outcome"], registry=registry)
        self.log_logged = Gauge(
            "mlp_prediction_log_logged_rows", "Rows written to the prediction log", registry=registry
        )
        self.log_spooled = Gauge(
            "mlp_prediction_log_spooled_rows", "Rows waiting on local disk", registry=registry
        )
        self.log_lost = Gauge(
            "mlp_prediction_log_lost_rows", "Rows lost by the prediction log (must be 0)", registry=registry
        )
        self.log_pending = Gauge(
            "mlp_prediction_log_pending_rows", "Rows buffered in memory", registry=registry
        )
        self.log_recovered = Gauge(
            "mlp_prediction_log_recovered_rows",
            "Rows a killed predecessor had answered, written from its journal at start",
            registry=registry,
        )

    def error(self, status: int, reason: str, detail: Any):
        """A JSON error answer, counted."""
        from fastapi.responses import JSONResponse

        self.errors_total.labels(reason).inc()
        self.requests_total.labels(str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status)

    def render(self, predictions: PredictionLog) -> bytes:
        """The exposition text, with the prediction log's counters as of now."""
        from prometheus_client import generate_latest

        self.log_logged.set(predictions.logged)
        self.log_spooled.set(predictions.spooled)
        self.log_lost.set(predictions.lost)
        self.log_pending.set(predictions.pending)
        self.log_recovered.set(predictions.recovered)
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------
# Reloading: on request, and by polling the serving location
# --------------------------------------------------------------------------------------
class Reloader:
    """Loads versions into the holder (counted), and polls the serving pointer in a thread."""

    def __init__(
        self, holder: ModelHolder, metrics: ServerMetrics, lake: Lake, model_name: str, poll_s: float
    ):
        self.holder = holder
        self.metrics = metrics
        self.lake = lake
        self.model_name = model_name
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self, version: str | None = None) -> None:
        try:
            self.holder.reload(version)
            self.metrics.reloads_total.labels("ok").inc()
            self.metrics.version_gauge.set(float(self.holder.version or 0))
        except ModelLoadError:
            self.metrics.reloads_total.labels("failed").inc()
            raise

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                pointer = location.read_pointer(self.lake, self.model_name)
                if pointer and pointer["version"] != self.holder.version:
                    self.reload(pointer["version"])
            except ModelLoadError:
                pass
            except Exception:  # the lake may be unreachable for a while: keep serving
                log.exception("serving location poll failed")

    def start_polling(self) -> None:
        if self.poll_s > 0:
            self._thread = threading.Thread(target=self._poll, name="serving-poll", daemon=True)
            self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()


def _lifespan(reloader: Reloader, predictions: PredictionLog):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        import gc

        import anyio

        try:
            reloader.reload()
        except ModelLoadError as err:
            log.warning("starting without a model: %s", err)
        # Warm the worker-thread machinery the reload endpoint uses (its first use imports it).
        await anyio.to_thread.run_sync(lambda: None)
        # Everything loaded so far lives for the whole process: keep it out of the garbage
        # collector's full passes (a pass over ~160k start-up objects paused requests ~0.1 s).
        gc.collect()
        gc.freeze()
        predictions.start()
        reloader.start_polling()
        yield
        reloader.stop_polling()
        predictions.close()  # graceful shutdown: nothing buffered is lost
        log.info(
            "prediction log closed: %d logged, %d spooled, %d lost, %d recovered at start",
            predictions.logged,
            predictions.spooled,
            predictions.lost,
            predictions.recovered,
        )

    return lifespan


# --------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------
def _add_predict_route(app, holder: ModelHolder, predictions: PredictionLog, metrics: ServerMetrics) -> None:
    error = metrics.error
    latency, requests_total, rows_total = metrics.latency, metrics.requests_total, metrics.rows_total

    @app.post("/predict")
    async def predict(request: Request):
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return error(413, "too_large", f"body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error(413, "too_large", f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
        model = holder.current
        if model is None:
            return error(503, "no_model", f"no model loaded: {holder.last_error or 'nothing deployed yet'}")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            return error(422, "malformed_json", [{"loc": ["body"], "msg": f"malformed JSON: {err}"}])
        try:
            rows, request_date = _parse(payload)
            matrix = _encode(model, rows)
        except FeatureError as err:
            return error(422, "invalid", [{"loc": ["body", *err.field.split(".")], "msg": str(err)}])
        scores = model.score_matrix(matrix)
        request_id = uuid.uuid4().hex
        elapsed = time.perf_counter() - started
        latency.observe(elapsed)
        requests_total.labels("200").inc()
        rows_total.inc(len(rows))
        now = dt.datetime.now(dt.UTC).isoformat()
        predictions.append(
            [
                {
                    "dt": request_date,
                    "ts": now,
                    "request_id": request_id,
                    "model_version": model.version,
                    "score": float(score),
                    "latency_ms": elapsed * 1000,
                    ROW_ID_FIELD: row.get(ROW_ID_FIELD),
                    **{f: row.get(f) for f in model.spec.features},
                }
                for row, score in zip(rows, scores, strict=True)
            ]
        )
        return {
            "request_id": request_id,
            "model": model.name,
            "model_version": model.version,
            "predictions": [{"score": float(s), "label": int(s >= THRESHOLD)} for s in scores],
        }


def _add_operations_routes(
    app,
    holder: ModelHolder,
    predictions: PredictionLog,
    server_metrics: ServerMetrics,
    reloader: Reloader,
    model_name: str,
    token: str,
) -> None:
    from fastapi.responses import JSONResponse, Response

    error = server_metrics.error

    @app.get("/health")
    async def health():
        model = holder.current
        return {
            "model": model_name,
            "version": model.version if model else None,
            "loaded_at": model.loaded_at if model else None,
            "ready": model is not None,
            "last_reload_error": holder.last_error or None,
        }

    @app.get("/metrics")
    async def metrics():
        return Response(server_metrics.render(predictions), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload")
    async def admin_reload(request: Request):
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not supplied or not _same(supplied, token):
            return error(403, "forbidden", "a valid admin token is required (Authorization: Bearer …)")
        body = await request.body()
        version = None
        if body:
            try:
                version = json.loads(body).get("version")
            except (ValueError, AttributeError):
                return error(422, "malformed_json", 'expected {} or {"version": N}')
        try:
            import anyio

            await anyio.to_thread.run_sync(reloader.reload, None if version is None else str(version))
        except ModelLoadError as err:
            return JSONResponse(
                {
                    "detail": f"reload failed, still serving v{holder.version or '-'}: {err}",
                    "version": holder.version,
                },
                status_code=409,
            )
        return {"model": model_name, "version": holder.version, "loaded_at": holder.current.loaded_at}


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _parse(payload: Any) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(payload, dict):
        raise FeatureError("body", "expected a JSON object with 'rows' (a list) or 'row' (an object)")
    extra = sorted(set(payload) - TOP_LEVEL_FIELDS)
    if extra:
        raise FeatureError(extra[0], "extra field not permitted")
    if "rows" in payload:
        rows = payload["rows"]
        if not isinstance(rows, list) or not rows:
            raise FeatureError("rows", "expected a non-empty list of objects")
        if len(rows) > MAX_ROWS:
            raise FeatureError("rows", f"at most {MAX_ROWS} rows per request, got {len(rows)}")
    elif "row" in payload:
        rows = [payload["row"]]
    else:
        raise FeatureError("rows", "field required ('rows' list or 'row' object)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise FeatureError(f"rows.{i}", "expected an object of features")
    request_date = payload.get("request_date") or dt.datetime.now(dt.UTC).date().isoformat()
    try:
        dt.date.fromisoformat(request_date)
    except (TypeError, ValueError):
        raise FeatureError("request_date", f"expected a date YYYY-MM-DD, got {request_date!r}") from None
    return rows, request_date


def _encode(model: LoadedModel, rows: list[dict[str, Any]]):
    import numpy as np

    allowed = set(model.spec.features) | {ROW_ID_FIELD}
    encoded = []
    for i, row in enumerate(rows):
        extra = sorted(set(row) - allowed)
        if extra:
            raise FeatureError(f"rows.{i}.{extra[0]}", "extra field not permitted")
        key = row.get(ROW_ID_FIELD)
        if key is not None and not isinstance(key, str):
            raise FeatureError(f"rows.{i}.{ROW_ID_FIELD}", "expected a string")
        try:
            encoded.append(model.spec.encode_row(row))
        except FeatureError as err:
            raise FeatureError(f"rows.{i}.{err.field}", str(err).split(": ", 1)[1]) from None
    return np.asarray(encoded, dtype=np.float32)
