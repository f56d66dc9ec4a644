"""``make demo``: start the embedded stack and run the main job through the scheduler.

Everything goes through the Airflow REST API, exactly as an operator would from the UI:

1. the raw history the demo needs (the windows of the dataset versions, the golden range, the
   drift window) is there before it starts, as a real upstream's archive would be: landed in bulk
   by the same code as ``raw_landing`` (``python -m mlpipeline land``); ``raw_landing`` backfills
   the days that arrive while the demo runs (its traffic days);
2. ``golden_dataset`` is triggered once (skipped when its version already exists: frozen);
3. ``dataset_generation`` backfills ``MLP_DEMO_FIRST_VERSION..MLP_DEMO_LAST_VERSION``;
4. every published version triggers ``model_training`` through the ``training_dataset``
   asset; the demo waits until the challenger was trained on the newest version;
5. ``model_deployment`` (asset ``model_candidate``) promotes or rejects it;
6. normal days: ``traffic_replay`` backfills the three days after the newest version (real
   flights as production traffic, delayed labels), then ``model_monitoring`` judges the last;
7. bad deployment: a model trained on inverted labels is forced into production (the demo
   bypasses the gate on purpose), three more days are served, and monitoring rolls it back
   through ``model_rollback`` by itself;
8. drift: a July day served by the winter model; monitoring triggers ``dataset_generation``
   for that day, whose asset event trains a new challenger, which ``model_deployment`` judges.

Steps 7 and 8 are shown once: a rerun finds their records and prints them.

Running the demo again is safe: backfills use ``reprocess_behavior="failed"``, so days that
already succeeded are not redone, and failed ones are retried.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from mlpipeline import locations
from mlpipeline.data import datasets
from mlpipeline.data.landing import iter_days
from mlpipeline.lake import Lake
from mlpipeline.local import stack
from mlpipeline.local.airflow_api import AirflowApi, AirflowApiError
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config
from mlpipeline.settings import Settings


def backfill_and_wait(
    api: AirflowApi, dag_id: str, start, end, timeout_s: float = 1800, conf: dict | None = None
) -> dict:
    """Unpause ``dag_id``, backfill ``start..end`` (runs' ``conf``) and wait for every run; raise if one failed."""
    states = api.wait_for_runs(dag_id, start_backfill(api, dag_id, start, end, conf), timeout_s=timeout_s)
    failed = sorted(d.isoformat() for d, s in states.items() if s != "success")
    if failed:
        raise AirflowApiError(
            f"{dag_id} failed for {', '.join(failed)}; open the runs in the Airflow UI for the task logs"
        )
    return states


def start_backfill(api: AirflowApi, dag_id: str, start, end, conf: dict | None = None) -> list[dt.date]:
    """Unpause ``dag_id`` and create the backfill of ``start..end``; its days (not waited for).

    Airflow allows one running backfill per DAG and marks a backfill completed only on a
    30-second timer of the scheduler (``_mark_backfills_complete``): the demo waits for that only
    when it backfills the same DAG again, never after its own runs are done.
    """
    api.wait_for_dag(dag_id)
    api.set_paused(dag_id, False)
    api.wait_no_active_backfill(dag_id)
    # Days that already succeeded are not rerun ("failed" reprocesses failed days only).
    api.create_backfill(dag_id, start, end, reprocess="failed", conf=conf)
    return list(iter_days(start, end))


def trigger_and_wait(api: AirflowApi, dag_id: str, conf: dict, timeout_s: float = 1800) -> str:
    """Trigger one run of ``dag_id`` with ``conf`` and wait for it to finish; return its state."""
    api.wait_for_dag(dag_id)
    api.set_paused(dag_id, False)
    run = api.trigger(dag_id, conf=conf)
    return api.wait_for_run(dag_id, run["dag_run_id"], timeout_s)


def wait_for_challenger(
    api: AirflowApi, model_name: str, dataset_version: str, timeout_s: float = 1800
) -> dict:
    """Wait until model_training is idle and alias challenger points at a model of ``dataset_version``.

    No retraining by hand: whatever Airflow batched, the training ledger's catch-up run trains
    every version published (or supersedes it by a newer one).
    """
    import mlflow

    from mlpipeline.training import tracking

    tracking.connect()
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.dag_runs("model_training", order_by="-run_after", limit=20)
        busy = [r for r in runs if r["state"] in ("queued", "running")]
        if runs and runs[0]["state"] == "failed" and not busy:
            raise AirflowApiError(f"model_training run {runs[0]['dag_run_id']} failed; see its task logs")
        try:
            version = client.get_model_version_by_alias(model_name, "challenger")
        except mlflow.exceptions.MlflowException:
            version = None
        if (
            not busy
            and version is not None
            # A newer one (a drift-triggered retrain of an earlier demo run) is fine too.
            and version.tags.get(tracking.TAG_DATASET_VERSION, "") >= dataset_version
        ):
            run = client.get_run(version.run_id)
            return {
                "model": model_name,
                "version": version.version,
                "dataset_version": version.tags.get(tracking.TAG_DATASET_VERSION),
                "val_roc_auc": run.data.metrics.get("val_roc_auc", float("nan")),
                "url": tracking.model_version_url(model_name, version.version),
            }
        time.sleep(1)
    raise AirflowApiError(f"no challenger trained on dataset {dataset_version} after {timeout_s:.0f}s")


def ledger_lines(lake: Lake, model: str, first: dt.date, last: dt.date) -> list[str]:
    """What became of each dataset version of the backfill (training ledger)."""
    from mlpipeline.training import ledger

    lines = []
    for day in iter_days(first, last):
        entry = ledger.read(lake, model, day.isoformat()) or {
            "status": "PENDING (not trained, not superseded)"
        }
        detail = (
            f"model v{entry['model_version']}" if entry["status"] == ledger.TRAINED
            else f"by {entry['by']}" if entry["status"] == ledger.SUPERSEDED
            else entry.get("reason", "")
        )  # fmt: skip
        lines.append(f"    {day}  {entry['status']:<10} {detail}  ({entry.get('airflow_run_id', '')})")
    return lines


def wait_for_deployments(api: AirflowApi, lake: Lake, model_name: str, timeout_s: float = 1800) -> dict:
    """Wait until model_deployment is idle with a champion; return it and the audit trail's decisions."""
    import httpx

    from mlpipeline.deployment import registry

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.dag_runs("model_deployment", order_by="-run_after", limit=20)
        busy = [r for r in runs if r["state"] in ("queued", "running")]
        history = registry.read_history(lake, model_name)
        if runs and not busy and history:
            if runs[0]["state"] == "failed":
                raise AirflowApiError(
                    f"model_deployment run {runs[0]['dag_run_id']} failed; see its task logs"
                )
            champion = next(
                (h["to_version"] for h in reversed(history) if h["action"] in ("promote", "rollback")), None
            )
            if champion is not None:
                from mlpipeline.settings import get_settings

                served = httpx.get(f"{get_settings().serving_url}/health", timeout=5).json().get("version")
                decisions = [
                    f"{h['action']:<8} v{h['to_version']} (champion was v{h['from_version']}): "
                    f"{'; '.join(h['reasons']) if isinstance(h['reasons'], list) else h['reasons']}"
                    for h in history[-5:]
                ]
                return {"champion": champion, "served": served, "decisions": decisions}
        time.sleep(1)
    raise AirflowApiError(f"model_deployment did not settle after {timeout_s:.0f}s")


def history_ranges(settings: Settings, cfg: PipelineConfig) -> list[tuple[dt.date, dt.date]]:
    """Raw days that exist before the demo's "today": the dataset versions' windows, the golden
    range, the drift window (with the days a stale golden set is rebuilt from) and the day after."""
    first_window_start = settings.demo_first_version - dt.timedelta(days=cfg.dataset.window_days - 1)
    drift_window_start = DRIFT_DAY - dt.timedelta(days=cfg.dataset.window_days - 1)
    refresh_days = cfg.golden.refresh_days if cfg.golden.refresh_on_stale else 0
    return [
        (max(first_window_start, settings.data_start), settings.demo_last_version),
        (cfg.golden.default_start, cfg.golden.default_end),
        # Before the window: the days monitoring.golden.refresh_range rebuilds a stale golden set from.
        (drift_window_start - dt.timedelta(days=refresh_days), DRIFT_DAY + dt.timedelta(days=1)),
    ]


def traffic_range(settings: Settings) -> tuple[dt.date, dt.date]:
    """The days that arrive while the demo runs (production traffic): raw_landing lands them."""
    return settings.demo_last_version + dt.timedelta(days=1), settings.demo_last_version + TRAFFIC_DAYS


def land_history(lake: Lake, settings: Settings, cfg: PipelineConfig) -> tuple[int, int]:
    """The upstream's archive, landed in bulk (``python -m mlpipeline land``'s path, threads for an
    S3 lake); days already committed are kept. Returns (landed, kept).

    Through ``raw_landing`` each day is an Airflow run: 111 days took 2 of the demo's 9 minutes,
    nearly all of it scheduling, for data a real upstream has delivered long before.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mlpipeline.data.landing import check_day, land_day
    from mlpipeline.data.nycflights13_source import TABLES

    days = sorted({d for start, end in history_ranges(settings, cfg) for d in iter_days(start, end)})
    for day in (days[0], days[-1]):
        check_day(day)
    todo = [d for d in days if lake.missing([locations.raw_partition(t, d) for t in TABLES])]
    if todo:
        land_day(lake, todo[0])  # builds the source's Parquet copies once, before any thread reads them
    workers = 1 if lake.root_uri.startswith("file:") else 4  # a file lake is CPU-bound; S3 waits on I/O
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda day: land_day(lake, day), todo[1:]))
    return len(todo), len(days) - len(todo)


#: Days of production traffic the demo replays after the last dataset version (then monitors):
#: days 1-3 served by the champion (normal days), days 4-6 by a deliberately degraded model.
TRAFFIC_DAYS = dt.timedelta(days=6)
#: The drift scenario: a day of July traffic served by the winter model.
DRIFT_DAY = dt.date(2013, 7, 15)
#: The demo's traffic_replay runs send at 200 rows/s (the DAG's default is 50): a day of ~950
#: flights in ~5 s instead of ~20 s, eight days in all; the model server's bench holds p99 <= 5 ms
#: at this rate (bench/serving.py), so the latency budget still judges a normal day.
REPLAY = {"rate_per_s": 200}


def _record_lines(lake: Lake, model: str, day: dt.date) -> list[str]:
    record = lake.read_json(locations.monitoring_record(model, day))
    lines = [f"    {day}: decision {record['decision'].upper()}: {'; '.join(record['reasons'])[:300]}"]
    for finding in record["findings"]:
        lines.append(f"      {finding['check']:<12} {finding['status']:<11} {finding['summary'][:150]}")
    lines.append(f"      drift report: {lake.uri(f'reports/drift/{model}/dt={day.isoformat()}/report.html')}")
    return lines


def monitor_traffic(api: AirflowApi, lake: Lake, settings: Settings, cfg: PipelineConfig) -> list[str]:
    """Normal days: replay three days after the newest version, then model_monitoring on the last."""
    first = settings.demo_last_version + dt.timedelta(days=1)
    last = settings.demo_last_version + dt.timedelta(days=3)
    backfill_and_wait(api, "traffic_replay", first, last, conf=REPLAY)
    backfill_and_wait(api, "model_monitoring", last, last)
    return _record_lines(lake, cfg.training.model_name, last)


def bad_deployment(api: AirflowApi, lake: Lake, settings: Settings, cfg: PipelineConfig) -> list[str]:
    """Force a degraded model into production; monitoring must roll it back by itself."""
    import httpx
    import mlflow

    from mlpipeline.deployment import registry, steps
    from mlpipeline.local import scenarios
    from mlpipeline.training import tracking

    model = cfg.training.model_name
    first = settings.demo_last_version + dt.timedelta(days=4)
    last = settings.demo_last_version + TRAFFIC_DAYS
    if lake.exists(locations.monitoring_record(model, last)):
        return ["    shown by an earlier demo run:", *_record_lines(lake, model, last)]
    api.wait_for_dag("model_rollback")
    api.set_paused("model_rollback", False)  # created unpaused; an older stack's DB may hold it paused
    tracking.connect()
    client = mlflow.MlflowClient()
    good = registry.current_champion(client, model)
    bad = scenarios.register_degraded_model(lake, cfg)
    evaluated = steps.evaluate_candidate({"model": model, "version": bad}, cfg, lake)
    steps.force_promote(
        model, bad, reason=f"demo scenario; the gate said {evaluated['decision']}", actor="demo:scenario",
        allowed=True,  # the demo shows this failure on purpose; elsewhere MLP_ALLOW_FORCE_PROMOTE guards it
    )  # fmt: skip
    backfill_and_wait(api, "traffic_replay", first, last, conf=REPLAY)
    backfill_and_wait(api, "model_monitoring", last, last)
    lines = [
        f"    forced v{bad} (inverted labels; the gate said {evaluated['decision'].upper()}) over v{good}",
        *_record_lines(lake, model, last),
    ]
    record = lake.read_json(locations.monitoring_record(model, last))
    if record["decision"] == "rollback":
        state = api.wait_for_run("model_rollback", f"auto_rollback__{last.isoformat()}", missing_ok=True)
        served = httpx.get(f"{settings.serving_url}/health", timeout=5).json().get("version")
        lines.append(
            f"    model_rollback {state}: champion v{registry.current_champion(client, model)}, server serves v{served}"
        )
    return lines


def drift_retrain(api: AirflowApi, lake: Lake, settings: Settings, cfg: PipelineConfig) -> list[str]:
    """Serve July flights to the winter model: drift, retraining on the newest data, a new challenger."""
    model = cfg.training.model_name
    day = DRIFT_DAY
    api.wait_for_dag("golden_dataset")
    api.set_paused("golden_dataset", False)  # monitoring triggers it when the golden set is stale
    backfill_and_wait(api, "traffic_replay", day, day, conf=REPLAY)
    backfill_and_wait(api, "model_monitoring", day, day)
    lines = _record_lines(lake, model, day)
    record = lake.read_json(locations.monitoring_record(model, day))
    stale = next((f for f in record["findings"] if f["check"] == "golden"), {})
    if (
        stale.get("status") == "breach"
        and (stale.get("figures") or {}).get("refresh")
        and cfg.golden.refresh_on_stale
    ):
        state = api.wait_for_run("golden_dataset", f"golden_refresh__{day.isoformat()}", missing_ok=True)
        info = datasets.current_golden(lake, cfg.golden.name)
        lines.append(
            f"    golden_dataset golden_refresh__{day} {state}: current golden set {info.version} "
            f"({info.start}..{info.end})"
        )
    if record["decision"] == "retrain":
        state = api.wait_for_run("dataset_generation", f"retrain__{day.isoformat()}", missing_ok=True)
        lines.append(f"    dataset_generation retrain__{day} {state}")
        challenger = wait_for_challenger(api, model, day.isoformat())
        lines.append(
            f"    new challenger v{challenger['version']} trained on {challenger['dataset_version']} "
            f"(validation ROC AUC {challenger['val_roc_auc']:.3f})"
        )
        deployed = wait_for_deployments(api, lake, model)
        lines.append(f"    champion after its evaluation: v{deployed['champion']}")
        lines += [f"      {line}" for line in evaluation_lines(lake, model, challenger["version"])]
        if str(deployed["champion"]) == str(challenger["version"]):
            after = day + dt.timedelta(days=1)
            backfill_and_wait(api, "traffic_replay", after, after, conf=REPLAY)
            backfill_and_wait(api, "model_monitoring", after, after)
            lines.append(f"    the next day, served by v{deployed['champion']}:")
            lines += _record_lines(lake, model, after)
    return lines


def evaluation_lines(lake: Lake, model: str, version: str) -> list[str]:
    """What judged a version: both sets, their sizes and days, and every rule."""
    path = f"reports/evaluation/{model}/v{version}/report.json"
    if not lake.exists(path):
        return []
    report = lake.read_json(path)
    judged = report.get("judged_on") or {}
    lines = [
        f"decided by {judged.get('decided_by')}: recent {judged.get('recent')}; golden {judged.get('golden')}",
    ]
    lines += [
        f"{'pass' if r['passed'] else 'FAIL'} {r['rule']}: {r['detail'][:200]}"
        for r in report["rules"]
        if r["rule"] in ("recent_set", "uplift", "slices", "golden_guard")
    ]
    return lines


def run(settings: Settings) -> int:
    cfg = get_pipeline_config()
    started = time.monotonic()
    what = {
        "embedded": "Airflow on SQLite with the LocalExecutor, MLflow, Spark Connect, a file lake",
        "distributed": f"Airflow on PostgreSQL with the CeleryExecutor and {settings.celery_workers} workers, "
        f"MLflow on PostgreSQL + S3, a Spark cluster of {settings.spark_workers} workers, an S3 lake",
    }[settings.stack]
    print(f"Starting the {settings.stack} stack ({what})…", flush=True)
    stack.up(settings)
    watchdog = _Watchdog(settings)
    watchdog.start()
    try:
        return _run(settings, cfg, started)
    finally:
        watchdog.stop()


class _Watchdog(threading.Thread):
    """Restarts a stack service that died while the demo waits (``stack.revive``)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="stack-watchdog", daemon=True)
        self.settings = settings
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(5):
            try:
                for name in stack.revive(self.settings):
                    print(f"  (watchdog: {name} had exited; restarted it)", flush=True)
            except Exception as err:  # never let the watchdog kill the demo
                print(f"  (watchdog: {type(err).__name__}: {err})", flush=True)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _run(settings: Settings, cfg: PipelineConfig, started: float) -> int:
    ui_up = time.monotonic() - started
    secrets = stack.load_or_create_secrets(stack.StackPaths(settings.state_dir), settings)
    api = AirflowApi(settings.airflow_url, settings.admin_user, secrets["admin_password"])
    errors = api.import_errors()
    if errors:
        raise AirflowApiError(f"DAG import errors: {errors}")
    lake = Lake.from_settings(settings)

    history = ", ".join(f"{a}..{b}" for a, b in history_ranges(settings, cfg))
    print(f"1/8 raw history (the upstream's archive, landed in bulk): {history}…", flush=True)
    landed, kept = land_history(lake, settings, cfg)
    print(f"    {landed} days landed, {kept} already there", flush=True)
    traffic_start, traffic_end = traffic_range(settings)
    print(
        f"1/8 raw_landing backfill {traffic_start}..{traffic_end} (the days that arrive from now on)…",
        flush=True,
    )
    traffic_days = start_backfill(api, "raw_landing", traffic_start, traffic_end)  # waited for at step 6

    golden = cfg.golden
    if lake.is_committed(datasets.golden_dir(golden.name, golden.default_version)):
        print(f"2/8 golden set {golden.name}/{golden.default_version} exists (frozen): kept", flush=True)
    else:
        print(
            f"2/8 golden_dataset {golden.default_version} ({golden.default_start}..{golden.default_end})…",
            flush=True,
        )
        state = trigger_and_wait(api, "golden_dataset", conf={})
        if state != "success":
            raise AirflowApiError("golden_dataset failed; open its run in the Airflow UI for the task logs")

    first, last = settings.demo_first_version, settings.demo_last_version
    for dag_id in ("model_training", "model_deployment"):
        api.wait_for_dag(dag_id)
        api.set_paused(dag_id, False)  # datasets trigger training, candidates trigger deployment (assets)
    print(f"3/8 dataset_generation backfill {first}..{last}…", flush=True)
    backfill_and_wait(api, "dataset_generation", first, last)
    print(f"4/8 model_training (triggered by the training_dataset asset) for {last}…", flush=True)
    challenger = wait_for_challenger(api, cfg.training.model_name, last.isoformat())
    print("5/8 model_deployment (triggered by the model_candidate asset)…", flush=True)
    deployed = wait_for_deployments(api, lake, cfg.training.model_name)
    landing = api.wait_for_runs("raw_landing", traffic_days, timeout_s=900)
    if any(state != "success" for state in landing.values()):
        raise AirflowApiError(f"raw_landing did not land every traffic day: {landing}")
    print("6/8 normal days: traffic_replay of three days, then model_monitoring…", flush=True)
    monitoring = monitor_traffic(api, lake, settings, cfg)
    print("7/8 bad deployment: a degraded model forced into production, then monitoring…", flush=True)
    rollback_lines = bad_deployment(api, lake, settings, cfg)
    print(f"8/8 drift: {DRIFT_DAY} (July) traffic served by the winter model, then monitoring…", flush=True)
    drift_lines = drift_retrain(api, lake, settings, cfg)

    lines = ["", "Demo finished.", "  training ledger (every version trained or superseded):"]
    lines += ledger_lines(lake, cfg.training.model_name, first, last)
    lines.append("  dataset versions:")
    for day in iter_days(first, last):
        manifest = datasets.read_manifest(lake, cfg.dataset.name, day)
        lines.append(
            f"    {manifest['version']}  window {manifest['window']['start']}..{manifest['window']['end']}  "
            f"rows {manifest['rows']}  label rate {manifest['label_rate']['train']:.3f}  "
            f"{manifest['content_hash'][:19]}…"
        )
    info = datasets.current_golden(lake, golden.name)
    lines += [
        f"  challenger      : {challenger['model']} v{challenger['version']} (dataset {challenger['dataset_version']}, "
        f"validation ROC AUC {challenger['val_roc_auc']:.3f}) {challenger['url']}",
        f"  golden set      : {info.name}/{info.version} {info.start}..{info.end} {info.content_hash[:19]}…",
        f"  champion        : {cfg.training.model_name} v{deployed['champion']} (served by {settings.serving_url})",
        *[f"    {line}" for line in deployed["decisions"]],
        f"  monitoring      : normal days (alarms: {lake.uri('alarms/alarms.jsonl')})",
        *monitoring,
        "  bad deployment  :",
        *rollback_lines,
        "  drift           :",
        *drift_lines,
        f"  lake            : {lake.uri()}",
        f"  UI up after     : {ui_up:.0f}s; whole demo: {time.monotonic() - started:.0f}s",
        f"  Airflow UI      : {settings.airflow_url}   login {settings.admin_user} / {secrets['admin_password']}",
        f"  MLflow UI       : {settings.mlflow_url}",
        f"  Model server    : {settings.serving_url} (POST /predict, GET /health, GET /metrics)",
        "  The stack keeps running; stop it with: make down",
    ]
    print("\n".join(lines))
    return 0
