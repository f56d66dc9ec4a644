"""Time the daily cycle on the running stack: a day lands → dataset → challenger → decision → serving.

Run after ``make demo`` (the stack keeps running): ``.venv/bin/python bench/daily_cycle.py``.
It picks the next day D whose raw data is not landed yet (after the demo's traffic days), then
does what the schedule does at midnight, through the REST API:

1. ``dataset_generation`` for D is started first (as its daily run would be): its sensor waits
   for D's raw partitions;
2. ``raw_landing`` for D lands them → the sensor fires → Spark job → gate → publish → the
   ``training_dataset`` event → ``model_training`` → the ``model_candidate`` event →
   ``model_deployment`` decides (and, when it promotes, the server swaps to the new version);
3. ``traffic_replay`` for D serves D's flights and logs the predictions; once the log is
   committed, ``model_monitoring`` for D (its midnight run) decides.

``landed_to_decision_s`` runs from the last raw commit marker to the deployment decision in
the audit trail; ``log_to_monitoring_decision_s`` from the end of the replay (log flushed) to
monitoring's record. The breakdown comes from the task instances (queued, start, end) of every
run in the chain and the Spark job's own log line. Last line of stdout: one JSON object.
Options: ``--day YYYY-MM-DD`` (default: the next unlanded day), ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "plugins")]

RAW_TABLES = ("flights", "weather", "planes", "airlines", "airports")
SPARK_LINE = re.compile(r"in ([0-9.]+)s \(Spark session start ([0-9.]+)s\)")
POLL_S = 0.5


def ts(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def wait_until(what: str, probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(POLL_S)
    raise SystemExit(f"daily_cycle: {what} not seen after {timeout_s:.0f}s")


def next_unlanded_day(lake, settings) -> dt.date:
    from mlpipeline import locations

    day = settings.demo_last_version + dt.timedelta(days=1)
    while day <= settings.data_end:
        if not lake.is_committed(locations.raw_partition("flights", day)):
            return day
        day += dt.timedelta(days=1)
    raise SystemExit("daily_cycle: every day up to MLP_DATA_END is landed; pass --day")


def run_breakdown(api, dag_id: str, run: dict) -> dict:
    """Per task: queue wait, run time, gap after the previous task; the run's own scheduling wait."""
    tis = [t for t in api.task_instances(dag_id, run["dag_run_id"]) if t.get("start_date")]
    tis.sort(key=lambda t: ts(t["start_date"]))
    tasks = {}
    previous_end = ts(run.get("start_date")) or ts(run.get("queued_at"))
    for ti in tis:
        queued, start, end = (
            ts(ti.get("queued_when")) or ts(ti["start_date"]),
            ts(ti["start_date"]),
            ts(ti["end_date"]),
        )
        tasks[ti["task_id"]] = {
            "state": ti["state"],
            "gap_before_s": round(max(0.0, (queued or start) - previous_end), 2) if previous_end else None,
            "queued_s": round(start - queued, 2) if queued else None,
            "run_s": round(end - start, 2) if end else None,
            "_end": end,
        }
        previous_end = end or previous_end
    return {
        "run_id": run["dag_run_id"],
        "state": run["state"],
        "scheduled_wait_s": round(ts(run["start_date"]) - ts(run["queued_at"]), 2)
        if run.get("start_date") and run.get("queued_at")
        else None,
        "wall_s": round(ts(run["end_date"]) - ts(run["start_date"]), 2) if run.get("end_date") else None,
        "tasks": tasks,
        "_start": ts(run.get("start_date")),
        "_end": ts(run.get("end_date")),
        "_queued": ts(run.get("queued_at")),
    }


def spark_figures(api, run: dict) -> dict:
    tis = {t["task_id"]: t for t in api.task_instances("dataset_generation", run["dag_run_id"])}
    ti = tis.get("build_dataset")
    if not ti:
        return {}
    text = api.task_log("dataset_generation", run["dag_run_id"], "build_dataset", max(1, ti["try_number"]))
    found = SPARK_LINE.findall(text)
    if not found:
        return {}
    job_s, session_s = (float(x) for x in found[-1])
    return {"spark_session_start_s": session_s, "spark_job_s": round(job_s - session_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()

    import httpx

    from mlpipeline import locations
    from mlpipeline.deployment import registry
    from mlpipeline.lake import Lake
    from mlpipeline.local import stack
    from mlpipeline.local.airflow_api import AirflowApi
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings
    from mlpipeline.training import ledger

    settings, cfg = get_settings(), get_pipeline_config()
    for key, value in stack.client_environment(settings).items():  # the distributed profile's S3 lake
        os.environ.setdefault(key, value)
    os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", stack.QUIET_LOGGERS)
    secrets = stack.load_or_create_secrets(stack.StackPaths(settings.state_dir), settings)
    api = AirflowApi(settings.airflow_url, settings.admin_user, secrets["admin_password"])
    lake = Lake.from_settings(settings)
    model = cfg.training.model_name
    day = args.day or next_unlanded_day(lake, settings)
    print(f"daily cycle for {day} on the {settings.stack} stack (load {loadavg()})", flush=True)
    for dag_id in ("raw_landing", "dataset_generation", "model_training", "model_deployment",
                   "traffic_replay", "model_monitoring"):  # fmt: skip
        api.wait_for_dag(dag_id)
        api.set_paused(dag_id, False)
    history_before = len(registry.read_history(lake, model))

    # 1-2. The dataset run waits (sensor), then the day lands.
    api.create_backfill("dataset_generation", day, day, reprocess="completed")
    wait_until("dataset_generation run", lambda: api.run_for_day("dataset_generation", day), 120)
    t_trigger = time.time()
    api.create_backfill("raw_landing", day, day, reprocess="completed")
    raw_dirs = [locations.raw_partition(t, day) for t in RAW_TABLES]
    wait_until("raw partitions", lambda: not lake.missing(raw_dirs), args.timeout)
    t_raw = time.time()
    print(f"  raw committed        +{t_raw - t_trigger:6.1f}s after raw_landing was triggered", flush=True)
    dataset_dir = locations.dataset_dir(cfg.dataset.name, day)
    wait_until("dataset published", lambda: lake.is_committed(dataset_dir), args.timeout)
    t_dataset = time.time()
    print(f"  dataset published    +{t_dataset - t_raw:6.1f}s", flush=True)
    entry = wait_until("ledger entry", lambda: ledger.read(lake, model, day.isoformat()), args.timeout)
    t_trained = time.time()
    if entry["status"] != ledger.TRAINED:
        raise SystemExit(f"daily_cycle: dataset {day} was {entry['status']}, not trained: {entry}")
    version = entry["model_version"]
    print(f"  challenger v{version} registered +{t_trained - t_dataset:6.1f}s", flush=True)

    def decided():
        history = registry.read_history(lake, model)[history_before:]
        moves = [h for h in history if str(h.get("to_version")) == str(version)]
        report = locations.evaluation_report_json(model, version)
        if moves:
            return moves[-1]
        if lake.exists(report):
            return {"action": lake.read_json(report).get("decision", "reject")}
        return None

    decision = wait_until("deployment decision", decided, args.timeout)
    t_decision = time.time()
    print(f"  decision {decision.get('action')}       +{t_decision - t_trained:6.1f}s", flush=True)
    t_serving = None
    if decision.get("action") == "promote":

        def serving():
            return str(httpx.get(f"{settings.serving_url}/health", timeout=5).json().get("version")) == str(
                version
            )

        wait_until("new version serving", serving, 300)
        t_serving = time.time()
        print(f"  v{version} serving     +{t_serving - t_decision:6.1f}s", flush=True)

    # 3. Traffic for D, then monitoring's run for D (needs a served champion).
    health = httpx.get(f"{settings.serving_url}/health", timeout=5).json()
    replay, t_log, t_monitored, monitoring = None, None, None, None
    if health.get("ready"):
        api.create_backfill("traffic_replay", day, day, reprocess="completed")
        replay = wait_until(
            "traffic_replay finished",
            lambda: (
                (r := api.run_for_day("traffic_replay", day)) and r["state"] in ("success", "failed") and r
            ),
            args.timeout,
        )
        t_log = time.time()
        api.create_backfill("model_monitoring", day, day, reprocess="completed")
        record = locations.monitoring_record(model, day)
        wait_until("monitoring record", lambda: lake.exists(record), args.timeout)
        t_monitored = time.time()
        monitoring = lake.read_json(record)
        print(
            f"  monitoring {monitoring['decision']}     +{t_monitored - t_log:6.1f}s after the log",
            flush=True,
        )
    else:
        print(f"  monitoring part skipped: the server serves no model ({health.get('last_reload_error')})")

    # Breakdown from the task instances of each run of the chain.
    time.sleep(3)  # let the last tasks' end dates reach the API
    runs = {
        "raw_landing": api.run_for_day("raw_landing", day),
        "dataset_generation": api.run_for_day("dataset_generation", day),
        "traffic_replay": replay,
        "model_monitoring": api.run_for_day("model_monitoring", day) if replay else None,
    }
    training_run = api.dag_run("model_training", entry["airflow_run_id"])
    runs["model_training"] = training_run
    deployments = [
        r for r in api.dag_runs("model_deployment", order_by="-run_after", limit=10)
        if ts(r["queued_at"]) and ts(r["queued_at"]) >= t_trained - 120
    ]  # fmt: skip
    if deployments:
        dep_run = deployments[-1]
        wait_until(
            "model_deployment run finished",
            lambda: api.dag_run("model_deployment", dep_run["dag_run_id"])["state"] in ("success", "failed"),
            300,
        )
        runs["model_deployment"] = api.dag_run("model_deployment", dep_run["dag_run_id"])
    breakdown = {name: run_breakdown(api, name, run) for name, run in runs.items() if run}
    ds, tr = breakdown["dataset_generation"], breakdown["model_training"]
    dep = breakdown.get("model_deployment")
    stages = {
        "raw_commit_to_sensor_done_s": round(
            (ds["_start"] or 0)
            + sum(t["run_s"] or 0 for k, t in ds["tasks"].items() if k == "wait_for_raw")
            - t_raw,
            2,
        ),
        "dataset_run_s": ds["wall_s"],
        "publish_to_training_queued_s": round(tr["_queued"] - (ds["_end"] or t_dataset), 2)
        if tr["_queued"]
        else None,
        "training_run_s": tr["wall_s"],
        "register_to_deployment_queued_s": round(dep["_queued"] - (tr["_end"] or t_trained), 2)
        if dep
        else None,
        "deployment_run_s": dep["wall_s"] if dep else None,
        **spark_figures(api, runs["dataset_generation"]),
        "gate_s": ds["tasks"].get("quality_gate", {}).get("run_s"),
        "train_model_s": tr["tasks"].get("train_model", {}).get("run_s"),
        "evaluate_s": dep["tasks"].get("evaluate", {}).get("run_s") if dep else None,
        "task_gaps_s": round(
            sum(
                (t["gap_before_s"] or 0) + (t["queued_s"] or 0)
                for b in breakdown.values()
                for t in b["tasks"].values()
            ),
            2,
        ),
    }
    for name, b in breakdown.items():
        print(f"  {name} ({b['run_id']}, {b['state']}, wall {b['wall_s']}s):")
        for task_id, t in b["tasks"].items():
            print(
                f"    {task_id:<24} gap {t['gap_before_s']}s  queued {t['queued_s']}s  ran {t['run_s']}s  {t['state']}"
            )
    result = {
        "day": day.isoformat(),
        "stack": settings.stack,
        "load": loadavg(),
        "landed_to_decision_s": round(t_decision - t_raw, 2),
        "landed_to_serving_s": round(t_serving - t_raw, 2) if t_serving else None,
        "log_to_monitoring_decision_s": round(t_monitored - t_log, 2) if t_monitored else None,
        "decision": decision.get("action"),
        "monitoring_decision": monitoring["decision"] if monitoring else None,
        "stages": stages,
        "runs": {
            k: {
                **{kk: vv for kk, vv in v.items() if not kk.startswith("_") and kk != "tasks"},
                "tasks": {
                    t: {kk: vv for kk, vv in f.items() if not kk.startswith("_")}
                    for t, f in v["tasks"].items()
                },
            }
            for k, v in breakdown.items()
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
