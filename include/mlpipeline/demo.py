"""``make demo``: start the embedded stack and run the main job through the scheduler.

Today the main job is the raw landing backfill: ``raw_landing`` is unpaused and backfilled
over ``MLP_DEMO_LANDING_START..MLP_DEMO_LANDING_END`` through the REST API, exactly as an
operator would from the UI. Running the demo again is safe (days already landed are skipped
by the backfill's ``reprocess_behavior="failed"``, failed ones are retried).
"""

from __future__ import annotations

import time

from mlpipeline import stack
from mlpipeline.airflow_api import AirflowApi, AirflowApiError
from mlpipeline.config import Settings
from mlpipeline.data.landing import iter_days, partition_dir
from mlpipeline.data.nycflights13_source import TABLES
from mlpipeline.lake import Lake


def backfill_and_wait(api: AirflowApi, dag_id: str, start, end, timeout_s: float = 900) -> dict:
    """Unpause ``dag_id``, backfill ``start..end`` and wait for every run; raise if one failed."""
    api.wait_for_dag(dag_id)
    api.set_paused(dag_id, False)
    days = list(iter_days(start, end))
    try:
        api.create_backfill(dag_id, start, end, reprocess="failed")
    except AirflowApiError as err:
        # Nothing to (re)process: every day already succeeded. Anything else is an error.
        if "409" not in str(err) and "No runs" not in str(err) and "no runs" not in str(err):
            raise
    states = api.wait_for_runs(dag_id, days, timeout_s=timeout_s)
    failed = sorted(d.isoformat() for d, s in states.items() if s != "success")
    if failed:
        raise AirflowApiError(
            f"{dag_id} failed for {', '.join(failed)}; open the runs in the Airflow UI for the task logs"
        )
    return states


def run(settings: Settings) -> int:
    started = time.monotonic()
    print("Starting the embedded stack (Airflow, MLflow)…", flush=True)
    stack.up(settings)
    ui_up = time.monotonic() - started
    secrets = stack.load_or_create_secrets(stack.StackPaths(settings.state_dir), settings)
    api = AirflowApi(settings.airflow_url, settings.admin_user, secrets["admin_password"])
    errors = api.import_errors()
    if errors:
        raise AirflowApiError(f"DAG import errors: {errors}")

    start, end = settings.demo_landing_start, settings.demo_landing_end
    print(f"Landing raw data {start}..{end} with a raw_landing backfill…", flush=True)
    backfill_and_wait(api, "raw_landing", start, end)

    lake = Lake.from_settings(settings)
    missing = lake.missing(partition_dir(t, d) for d in iter_days(start, end) for t in TABLES)
    if missing:
        raise AirflowApiError(f"runs succeeded but partitions are missing: {missing}")
    flights = sum(lake.read_commit(partition_dir("flights", d)).meta["rows"] for d in iter_days(start, end))

    print(
        "\n".join(
            [
                "",
                "Demo finished.",
                f"  raw data landed : {start}..{end}, {flights} flights, under {lake.uri('raw')}",
                f"  UI up after     : {ui_up:.0f}s; whole demo: {time.monotonic() - started:.0f}s",
                f"  Airflow UI      : {settings.airflow_url}   login {settings.admin_user} / "
                f"{secrets['admin_password']}",
                f"  MLflow UI       : {settings.mlflow_url}",
                "  The stack keeps running; stop it with: make down",
            ]
        )
    )
    return 0
