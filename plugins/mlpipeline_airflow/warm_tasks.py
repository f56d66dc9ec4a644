"""Warm task processes: the heavy libraries imported once, in the scheduler, not in every task.

Airflow 3's LocalExecutor forks ``parallelism`` long-lived workers from the scheduler process
(``multiprocessing`` with ``fork``), and the task SDK's supervisor forks every task from a worker
(``os.fork``). A module the scheduler imported before its workers forked is already in each
task's ``sys.modules``. Measured here (2 cores, quiet): ``import great_expectations`` 19 s,
mlflow 9 s, xgboost 9 s, evidently 20 s, all of them together 33 s — paid today by every
gate, training, evaluation and monitoring task. The scheduler pays it once, at start-up; the
tasks' own ``import`` statements (inside task bodies, as the house rules want) become lookups.

Only the scheduler (and a Celery worker, whose prefork pool forks the same way) preloads (the
api-server, dag-processor and triggerer never run tasks), and
only what ``MLP_PRELOAD_MODULES`` lists (comma-separated; empty: off). Importing these starts no
thread (checked: ``threading.enumerate()`` after importing them all), so forking stays safe. A
module that fails to import is logged and skipped: the task that needs it fails with the real
error, as it would without the preload.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

PRELOAD_ENV = "MLP_PRELOAD_MODULES"

log = logging.getLogger(__name__)

#: What this process preloaded; set once. The forked workers and tasks inherit it, so the
#: plugin manager's second execution of ``airflow_local_settings.py`` in a task is silent.
_preloaded: dict[str, float] | None = None


def modules_to_preload(environ: dict[str, str] | None = None) -> list[str]:
    value = (environ if environ is not None else os.environ).get(PRELOAD_ENV, "")
    return [name.strip() for name in value.split(",") if name.strip()]


def is_scheduler(argv: list[str] | None = None) -> bool:
    """True in the processes tasks fork from: ``airflow scheduler`` (LocalExecutor workers) and
    ``airflow celery worker`` (its prefork pool; the distributed profile)."""
    args = sys.argv if argv is None else argv
    if len(args) < 2 or os.path.basename(args[0]) != "airflow":
        return False
    return args[1] == "scheduler" or args[1:3] == ["celery", "worker"]


def preload(names: list[str]) -> dict[str, float]:
    """Import each module; return the seconds each took (a failed one is logged, not raised)."""
    took: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as err:  # the task that needs it reports the real error
            log.warning(
                "preload of %s failed (%s: %s); tasks import it themselves", name, type(err).__name__, err
            )
            continue
        took[name] = round(time.perf_counter() - started, 2)
    return took


def warm_scheduler() -> dict[str, float] | None:
    """Preload the configured modules when this process is the scheduler; else do nothing."""
    global _preloaded
    names = modules_to_preload()
    if _preloaded is not None or not names or not is_scheduler():
        return None
    started = time.perf_counter()
    took = _preloaded = preload(names)
    print(  # the scheduler's log, before Airflow's logging is set up
        f"mlpipeline: preloaded {len(took)}/{len(names)} modules for task processes in "
        f"{time.perf_counter() - started:.1f} s: {took}",
        file=sys.stderr,
        flush=True,
    )
    return took
