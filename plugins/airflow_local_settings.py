"""Airflow's local-settings hook: imported by every Airflow process when Airflow starts.

One use: the scheduler imports the heavy libraries its forked task processes inherit
(``mlpipeline_airflow.warm_tasks``; on only when ``MLP_PRELOAD_MODULES`` is set, as the
embedded stack does). Every other process returns at once.
"""

from mlpipeline_airflow.warm_tasks import warm_scheduler

warm_scheduler()
