"""
# traffic_replay

The demo's **production traffic and its delayed ground truth**: sends the flights scheduled
on day D to the model server as prediction requests, and lands the true outcomes of an
earlier day, as a monitoring job would later find them.

**Demo-only DAG**: it stands in for real clients and a real label feed, so it drives the
traffic simulator of `mlpipeline.local.replay` (the only DAG allowed to import
`mlpipeline.local`; `tests/dags/test_house_rules.py`). A production deployment leaves it out.

* **Schedule**: daily, data interval = one day (`[D, D+1)`), from `MLP_DATA_START` to
  `MLP_DATA_END`; `catchup=False`, so nothing runs by itself: **backfill** a range from the UI
  (*Trigger → Backfill*) or `airflow backfill create --dag-id traffic_replay --from-date
  2013-01-28 --to-date 2013-02-03` (after `raw_landing` landed those days and a model is
  deployed). `max_active_runs=1`: runs never overlap, so the rate bound holds for the server.
* **Flow** (two independent tasks):
  * `replay_traffic`: checks that `raw/{flights,weather,planes}/dt=D` are committed (the
    error names the missing partitions), asks the server's `/health` which model it serves,
    reads that version's feature list from its export (`serving/models/<model>/v<N>/`),
    builds one request row per scheduled flight of D (cancelled ones too: traffic has no
    label yet) with the same feature derivation as the dataset job, and `POST /predict`s
    them with `request_date` = D at **at most `rate_per_s` rows/s** (default 50: a day of
    ~900 flights takes ~20 s; total time bounded by 20 min). 5xx answers are retried 3
    times; the server down or serving no model (503) fails the task with that reason; more
    than 5% of rows refused (422, e.g. a category the model never saw) fails it without
    retry, quoting the server's reasons. The predictions land in the server's prediction
    log, `serving/predictions/dt=D/`.
  * `land_delayed_labels`: labels arrive **`LABEL_DELAY_DAYS` = 2 days** after the traffic:
    the run for D writes the outcomes of D-2 (`flight_key`, `flight_date`, `arr_delay`,
    `is_delayed` = arr_delay > 15 min or null when it never arrived, `cancelled`,
    `diverted`) to `serving/labels/dt=D-2/`, committed atomically (a rerun replaces it).
    Skipped when D-2 is before `MLP_DATA_START`; the labels of the last two days of the
    range only land if the range is extended.
* **Params**: `rate_per_s` (rows per second, default 50), `batch_size` (rows per request,
  default 1; a refused request fails all its rows).
* **Needs**: `raw_landing` for D and D-2; the model server at `MLP_HOST:MLP_SERVING_PORT`
  with a deployed model (`model_deployment`); `MLP_LAKE_URI` (+ `aws_default` for `s3://`).
* **Triage**: the task log names the missing partition, the unreachable server, or the
  server's reasons for refused rows. Rerunning `land_delayed_labels` is always safe;
  rerunning `replay_traffic` sends the day again, so the prediction log then holds its
  flights twice (consumers keep the latest prediction per `flight_key`).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from mlpipeline.dag_defaults import DEFAULT_ARGS, data_end, data_start, fail_without_retry, run_deadline
from mlpipeline.local.replay import REPLAY_BATCH_SIZE, REPLAY_RATE_PER_S


@dag(
    dag_id="traffic_replay",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=data_start(),
    end_date=data_end(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=run_deadline(hours=1),
    tags=["mlpipeline", "serving", "traffic", "labels"],
    doc_md=__doc__,
    params={
        "rate_per_s": Param(
            REPLAY_RATE_PER_S,
            type="number",
            exclusiveMinimum=0,
            maximum=1000,
            title="Rows per second",
            description="How fast the day's flights are sent to the model server (a bounded load).",
        ),
        "batch_size": Param(
            REPLAY_BATCH_SIZE,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Rows per request",
            description="Rows in each POST /predict request.",
        ),
    },
)
def traffic_replay():
    @task(execution_timeout=dt.timedelta(minutes=30))
    def replay_traffic(data_interval_start=None, params=None) -> dict:
        """Send day D's scheduled flights to the model server at a bounded rate."""
        from mlpipeline.lake import Lake
        from mlpipeline.local import replay
        from mlpipeline.settings import get_settings

        with fail_without_retry(replay.RowsRejectedError):
            result = replay.replay_traffic(
                Lake.from_settings(),
                get_settings().serving_url,
                data_interval_start.date(),
                rate_per_s=float(params["rate_per_s"]),
                batch_size=int(params["batch_size"]),
            )
        return result.as_dict()

    @task
    def land_delayed_labels(data_interval_start=None) -> dict:
        """Land the true outcomes of day D - LABEL_DELAY_DAYS (labels arrive after the traffic)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from mlpipeline.lake import Lake
        from mlpipeline.local import replay
        from mlpipeline.settings import get_settings

        traffic_day = data_interval_start.date()
        labels_day = replay.labels_day_for(traffic_day, get_settings().data_start)
        if labels_day is None:
            raise AirflowSkipException(
                f"labels land {replay.LABEL_DELAY_DAYS} days after the traffic: the run for "
                f"{traffic_day.isoformat()} would land {traffic_day - dt.timedelta(replay.LABEL_DELAY_DAYS)}, "
                f"before the data start {get_settings().data_start.isoformat()}"
            )
        return replay.land_labels(Lake.from_settings(), labels_day)

    replay_traffic()
    land_delayed_labels()


traffic_replay()
