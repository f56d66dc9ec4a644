"""Time model training: the project's final fit against bare XGBoost, the search rate, the tasks.

Everything runs against real inputs in a temporary directory (removed at the end, also on error):

* a lake with the raw days of 2013-01-01..2013-12-30 (copied from ``/tmp/sparkjob_lake/raw``
  when that lake holds every partition the two windows need, else landed with
  ``mlpipeline.data.landing.land_range``);
* two dataset versions built exactly as the ``dataset_generation`` DAG builds them
  (``data_steps.prepare`` → ``build_dataset.py`` in a fresh process → ``data_steps.gate`` →
  ``data_steps.publish_training``): the 28 days ending 2013-01-28 and the 364 days ending
  2013-12-30;
* a real MLflow tracking server (SQLite store, proxied artifacts) on a free loopback port.

Measured (the machine's load average is printed with the figures):

1. final fit, per window: ``train.fit_final`` (DMatrix construction + ``xgb.train`` with early
   stopping + keeping the best rounds) against bare ``xgb.DMatrix`` + ``xgb.train`` on the same
   arrays and parameters; median of ``--repeats`` runs, alternating which one goes first. The
   encoding (``train.prepare_data``) is timed on its own.
2. search rate: ``train.search`` (nested MLflow runs) inside a parent run, 20 trials on the
   28-day window (and ``--year-trials`` on the year); trials/min = trials / minutes. The MLflow
   calls one trial makes are also timed on their own (empty runs).
3. the two Airflow tasks of ``model_training`` on the 28-day window with 20 trials:
   ``training.steps.train_candidate`` then ``training.steps.register_candidate``, against the MLflow server.

Run from the repository root: ``.venv/bin/python bench/training.py``. Last line of stdout: one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIG = ROOT / "include" / "config" / "pipeline.yaml"
SOURCE_LAKE = Path("/tmp/sparkjob_lake")
YEAR_START = dt.date(2013, 1, 1)
YEAR_END = dt.date(2013, 12, 30)
# (label, first day, last day = dataset version)
WINDOWS = (
    ("28d", dt.date(2013, 1, 1), dt.date(2013, 1, 28)),
    ("year", YEAR_START, YEAR_END),
)
#: Fixed, representative parameters of the final-fit comparison (inside the search space).
FIT_PARAMS: dict[str, Any] = {
    "eta": 0.1,
    "max_depth": 6,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "max_cat_to_onehot": 4,
}
SEARCH_TRIALS = 20
SEARCH_TIMEOUT_S = 600.0
MLFLOW_PROBE_RUNS = 10
TARGET_FIT_RATIO = 1.3
TARGET_TASK_S = 60.0
DEVELOPER_MLFLOW_PORT = 5000


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != DEVELOPER_MLFLOW_PORT:
            return port


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of the whole process (every thread) and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------
# Environment (before any mlpipeline settings are read)
# ------------------------------------------------------------------------------------------
def configure_environment(base: Path, port: int, pipeline_config: Path) -> str:
    """Point every setting at the temporary directory and the bench's MLflow server."""
    for key in [k for k in os.environ if k.startswith("MLP_")]:
        del os.environ[key]
    for key in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        os.environ.pop(key, None)
    uri = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "MLP_STATE_DIR": str(base / "state"),
            "MLP_LAKE_URI": f"file://{base / 'lake'}",
            "MLP_PIPELINE_CONFIG": str(pipeline_config),
            "MLP_MLFLOW_TRACKING_URI": uri,
            "MLFLOW_TRACKING_URI": uri,
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"}
            ),
            # One "View run … at" line per trial would drown the table (printing costs nothing).
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "GIT_PYTHON_REFRESH": "quiet",
        }
    )
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings

    get_settings.cache_clear()
    get_pipeline_config.cache_clear()
    return uri


# ------------------------------------------------------------------------------------------
# Set-up: MLflow server, raw lake, dataset versions
# ------------------------------------------------------------------------------------------
def start_mlflow(root: Path, port: int) -> subprocess.Popen:
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    with open(root / "server.log", "wb") as server_log:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination", str(root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole at the end
        )  # fmt: skip


def wait_healthy(proc: subprocess.Popen, uri: str, log_path: Path, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MLflow server exited ({proc.returncode}); see {log_path}")
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"MLflow server did not answer within {timeout_s:.0f}s; see {log_path}")


def stop_mlflow(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group the server was started in (its workers)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # workers left behind by an exited server


def raw_lake(lake) -> str:
    """Fill the lake's raw zone: copied from ``SOURCE_LAKE`` if complete there, else landed."""
    from mlpipeline.data import steps as data_steps
    from mlpipeline.data.landing import land_range
    from mlpipeline.lake import Lake

    source = SOURCE_LAKE / "raw"
    if source.is_dir():
        source_lake = Lake.from_uri(f"file://{SOURCE_LAKE}")
        if not any(data_steps.missing_partitions(source_lake, start, end) for _, start, end in WINDOWS):
            shutil.copytree(source, lake.path("raw"))
            return f"copied from {source}"
    land_range(lake, YEAR_START, YEAR_END)
    return f"landed {YEAR_START}..{YEAR_END} with land_range"


def build_version(lake, settings, cfg, start: dt.date, end: dt.date) -> dict[str, Any]:
    """One dataset version through the real job, the quality gate and the publish step."""
    from mlpipeline.data import steps as data_steps
    from mlpipeline.data.datasets import JOB_SCRIPT

    plan = data_steps.prepare(
        kind="training",
        name=cfg.dataset.name,
        version=end.isoformat(),
        start=start,
        end=end,
        lake=lake,
        settings=settings,
        cfg=cfg,
    )
    result = subprocess.run(
        [sys.executable, str(JOB_SCRIPT), *plan.job_args()], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"build_dataset.py {end} exited {result.returncode}:\n{result.stderr[-3000:]}")
    quality = data_steps.gate(plan, lake=lake, cfg=cfg)
    return data_steps.publish_training(plan, quality, lake=lake, cfg=cfg)


# ------------------------------------------------------------------------------------------
# 1. Final fit: project against bare XGBoost
# ------------------------------------------------------------------------------------------
def bare_fit(data, tcfg, params: dict[str, Any], nthread: int | None = None):
    """What one writes without the project: DMatrix from the same arrays, then ``xgb.train``."""
    import xgboost as xgb

    from mlpipeline.training import train

    nthread = tcfg.nthread if nthread is None else nthread
    common = {
        "feature_names": list(data.spec.features),
        "feature_types": data.spec.feature_types,
        "enable_categorical": True,
        "nthread": nthread,
    }
    dtrain = xgb.DMatrix(data.x_train, label=data.y_train, **common)
    dvalid = xgb.DMatrix(data.x_valid, label=data.y_valid, **common)
    return xgb.train(
        train.base_params(tcfg) | params | {"nthread": nthread},
        dtrain,
        num_boost_round=tcfg.num_boost_round,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=tcfg.early_stopping_rounds,
        verbose_eval=False,
    )


def warm_up(data, tcfg) -> None:
    """One tiny untimed fit: OpenMP threads and XGBoost's first-call costs out of the figures."""
    import xgboost as xgb

    from mlpipeline.training import train

    n = min(2000, len(data.x_train))
    matrix = xgb.DMatrix(
        data.x_train[:n],
        label=data.y_train[:n],
        feature_types=data.spec.feature_types,
        enable_categorical=True,
        nthread=tcfg.nthread,
    )
    xgb.train(train.base_params(tcfg) | FIT_PARAMS, matrix, num_boost_round=3)


def compare_fit(label: str, data, tcfg, repeats: int, single_thread: bool) -> dict[str, Any]:
    """Project against bare fits, alternating which goes first; optionally bare with 1 thread."""
    import numpy as np

    from mlpipeline.training import train

    fits = {
        "project": lambda: train.fit_final(data, tcfg, dict(FIT_PARAMS)),
        "bare": lambda: bare_fit(data, tcfg, dict(FIT_PARAMS)),
    }
    if single_thread and tcfg.nthread != 1:
        fits["bare_1thread"] = lambda: bare_fit(data, tcfg, dict(FIT_PARAMS), nthread=1)
    wall: dict[str, list[float]] = {name: [] for name in fits}
    cpu: dict[str, list[float]] = {name: [] for name in fits}
    boosters: dict[str, Any] = {}
    for rep in range(repeats):
        order = list(fits) if rep % 2 == 0 else list(reversed(fits))
        for name in order:
            seconds, cpu_seconds, boosters[name] = timed_cpu(fits[name])
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
        line = ", ".join(f"{n} {wall[n][-1]:.2f} s (cpu {cpu[n][-1]:.2f} s)" for n in fits)
        log(f"  [{label}] repeat {rep + 1}: {line}  load {loadavg()}")
    project_booster, bare_booster = boosters["project"], boosters["bare"]
    best = bare_booster.best_iteration
    slice_s, bare_kept = timed(lambda: bare_booster[: best + 1])
    same_model = project_booster.num_boosted_rounds() == best + 1 and bool(
        np.array_equal(train.predict(project_booster, data.x_valid), train.predict(bare_kept, data.x_valid))
    )
    project_med, bare_med = statistics.median(wall["project"]), statistics.median(wall["bare"])
    result = {
        "project_s": project_med,
        "bare_s": bare_med,
        "ratio": project_med / bare_med,
        "ratio_of_min": min(wall["project"]) / min(wall["bare"]),
        "project_cpu_s": statistics.median(cpu["project"]),
        "bare_cpu_s": statistics.median(cpu["bare"]),
        "runs_s": wall,
        "runs_cpu_s": cpu,
        "best_iteration": best,
        "slice_s": slice_s,
        "same_model": same_model,
    }
    if "bare_1thread" in wall:
        result["bare_1thread_s"] = statistics.median(wall["bare_1thread"])
        result["bare_1thread_cpu_s"] = statistics.median(cpu["bare_1thread"])
    return result


# ------------------------------------------------------------------------------------------
# 2. Search rate
# ------------------------------------------------------------------------------------------
def child_runs(experiment_id: str, parent_run_id: str) -> list:
    import mlflow

    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        output_format="list",
        max_results=1000,
    )


def run_search(label: str, data, tcfg, n_trials: int, timeout_s: float, experiment_id: str) -> dict[str, Any]:
    import mlflow

    from mlpipeline.training import train

    with mlflow.start_run(run_name=f"bench search {label}") as parent:
        seconds, best = timed(lambda: train.search(data, tcfg, n_trials=n_trials, timeout_s=timeout_s))
    runs = child_runs(experiment_id, parent.info.run_id)
    fit_s = sum(r.data.metrics.get("fit_seconds", 0.0) for r in runs)
    statuses: dict[str, int] = {}
    for run in runs:
        key = f"{run.data.tags.get('trial_state', '?')}->{run.info.status}"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "seconds": seconds,
        "requested_trials": n_trials,
        "timeout_s": timeout_s,
        "n_trials": best["n_trials"],
        "n_complete": best["n_complete"],
        "n_pruned": best["n_pruned"],
        "trials_per_min": best["n_trials"] / (seconds / 60),
        "best_val_logloss": best["val_logloss"],
        "best_iteration": best["best_iteration"],
        "trial_runs": len(runs),
        "complete_trials_fit_s": fit_s,
        "trial_states": statuses,
    }


def mlflow_calls_per_trial(experiment_id: str) -> float:
    """Median wall time of the MLflow calls one completed trial makes, with nothing trained."""
    import mlflow

    from mlpipeline.training.tracking import TAG_ROLE

    params = {name: 1.0 for name in FIT_PARAMS} | {"lambda": 1.0, "alpha": 1.0}
    samples = []
    with mlflow.start_run(run_name="bench mlflow probe"):
        for i in range(MLFLOW_PROBE_RUNS):
            started = time.perf_counter()
            with mlflow.start_run(nested=True, run_name=f"probe-{i:03d}"):
                mlflow.set_tags({TAG_ROLE: "trial", "trial_number": str(i)})
                mlflow.log_params(params)
                mlflow.log_metrics(
                    {"val_logloss": 0.5, "val_auc": 0.7, "best_iteration": 10, "fit_seconds": 1}
                )
                mlflow.set_tag("trial_state", "COMPLETE")
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# ------------------------------------------------------------------------------------------
# 3. The model_training tasks
# ------------------------------------------------------------------------------------------
def run_tasks(version: str, n_trials: int) -> dict[str, Any]:
    import mlflow

    from mlpipeline.training import steps as training_steps

    train_s, trained = timed(lambda: training_steps.train_candidate(version, context=None, n_trials=n_trials))
    register_s, registered = timed(lambda: training_steps.register_candidate(trained, None))
    run = mlflow.get_run(trained["run_id"])
    children = child_runs(trained["experiment_id"], trained["run_id"])
    search_span = (
        (max(r.info.end_time for r in children) - min(r.info.start_time for r in children)) / 1000
        if children
        else float("nan")
    )
    return {
        "train_s": train_s,
        "register_s": register_s,
        "total_s": train_s + register_s,
        "task_seconds_metric": run.data.metrics.get("task_seconds"),
        "final_fit_seconds": run.data.metrics.get("final_fit_seconds"),
        "final_rounds": run.data.metrics.get("final_rounds"),
        "search_span_s": search_span,
        "search_trials": run.data.metrics.get("search_trials"),
        "search_pruned": run.data.metrics.get("search_pruned"),
        "val_roc_auc": trained.get("val_roc_auc"),
        "model_version": registered["version"],
    }


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the clean-up below runs when the bench is stopped."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="final-fit timings per window (median)")
    parser.add_argument(
        "--year-trials", type=int, default=5, help="search trials on the year window (0: skip)"
    )
    parser.add_argument(
        "--year-timeout",
        type=float,
        default=180.0,
        help="search timeout on the year window, s (Optuna stops starting trials after it)",
    )
    parser.add_argument(
        "--no-single-thread",
        action="store_true",
        help="skip the bare fit with nthread=1 on the 28-day window (an oversubscription check)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=["ACTIVE", "PASSIVE"],
        help="set OMP_WAIT_POLICY for this process (default: leave the environment as it is)",
    )
    parser.add_argument("--pipeline-config", type=Path, default=PIPELINE_CONFIG)
    return parser.parse_args()


def bench(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # before xgboost loads libgomp
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }
    port = free_port()
    uri = configure_environment(base, port, args.pipeline_config.resolve())

    import mlflow

    from mlpipeline.data import datasets
    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings
    from mlpipeline.training import tracking, train

    settings, cfg = get_settings(), get_pipeline_config()
    tcfg = cfg.training
    lake = Lake.from_settings(settings)

    # ---- set-up (not part of any figure) --------------------------------------------------
    setup_started = time.perf_counter()
    server = start_mlflow(base / "mlflow", port)  # starts while the datasets are built
    try:
        log(f"temporary directory {base}; MLflow server {uri} (pid {server.pid})")
        seconds, how = timed(lambda: raw_lake(lake))
        log(f"raw lake: {how} in {seconds:.1f} s")
        for label, start, end in WINDOWS:
            seconds, manifest = timed(lambda s=start, e=end: build_version(lake, settings, cfg, s, e))
            log(f"dataset {label} ({start}..{end}): {manifest['rows']} rows, built in {seconds:.1f} s")
        wait_healthy(server, uri, base / "mlflow" / "server.log")
        assert tracking.tracking_uri() == uri, tracking.tracking_uri()
        tracking.connect()
        figures["setup_s"] = time.perf_counter() - setup_started
        log(f"set-up: {figures['setup_s']:.1f} s (not part of any figure)")
        figures["loadavg_measure_start"] = loadavg()
        log(f"load average before measuring: {figures['loadavg_measure_start']} ({os.cpu_count()} cpus)")

        # ---- 1. final fit -------------------------------------------------------------
        loaded = {}
        for label, _, end in WINDOWS:
            load_s, (manifest, frames) = timed(
                lambda e=end: datasets.load_dataset(lake, cfg.dataset.name, e.isoformat(), verify=True)
            )
            encode_runs = []
            for _ in range(args.repeats):
                seconds, data = timed(lambda m=manifest, f=frames: train.prepare_data(m, f))
                encode_runs.append(seconds)
            loaded[label] = data
            figures[f"rows_{label}"] = {"train": len(data.y_train), "validation": len(data.y_valid)}
            figures[f"features_{label}"] = len(data.spec.features)
            figures[f"load_dataset_s_{label}"] = load_s
            figures[f"prepare_data_s_{label}"] = statistics.median(encode_runs)
        warm_up(loaded["28d"], tcfg)
        figures["xgboost_nthread"] = tcfg.nthread
        for label, _, _ in WINDOWS:
            single = label == "28d" and not args.no_single_thread
            result = compare_fit(label, loaded[label], tcfg, args.repeats, single)
            for key, value in result.items():
                figures[f"fit_{key}_{label}"] = value

        # ---- 2. search rate -----------------------------------------------------------
        experiment = mlflow.set_experiment("bench_training_search")
        figures["mlflow_calls_per_trial_s"] = mlflow_calls_per_trial(experiment.experiment_id)
        search_cases = [("28d", SEARCH_TRIALS, SEARCH_TIMEOUT_S)]
        if args.year_trials:
            search_cases.append(("year", args.year_trials, args.year_timeout))
        for label, n_trials, timeout_s in search_cases:
            log(f"  search {label}: {n_trials} trials, timeout {timeout_s:.0f} s …")
            figures[f"search_{label}"] = run_search(
                label, loaded[label], tcfg, n_trials, timeout_s, experiment.experiment_id
            )

        # ---- 3. the two tasks ---------------------------------------------------------
        del loaded
        log(f"  train_candidate + register_candidate on {WINDOWS[0][2]}, {SEARCH_TRIALS} trials …")
        figures["task_28d"] = run_tasks(WINDOWS[0][2].isoformat(), SEARCH_TRIALS)
        figures["loadavg_end"] = loadavg()
    finally:
        stop_mlflow(server)
    return figures


def report(f: dict[str, Any]) -> dict[str, Any]:
    s28, task = f["search_28d"], f["task_28d"]
    syear = f.get("search_year")
    rows = [
        ("rows train/validation", *(f"{f[f'rows_{w}']['train']}/{f[f'rows_{w}']['validation']}" for w in ("28d", "year"))),
        ("features", f["features_28d"], f["features_year"]),
        ("load_dataset (verify) s", *(f"{f[f'load_dataset_s_{w}']:.2f}" for w in ("28d", "year"))),
        ("prepare_data (encode) s", *(f"{f[f'prepare_data_s_{w}']:.3f}" for w in ("28d", "year"))),
        ("fit_final (project) s, median", *(f"{f[f'fit_project_s_{w}']:.2f}" for w in ("28d", "year"))),
        ("bare DMatrix+xgb.train s, median", *(f"{f[f'fit_bare_s_{w}']:.2f}" for w in ("28d", "year"))),
        ("overhead ratio, medians (≤ 1.3)", *(f"{f[f'fit_ratio_{w}']:.3f}" for w in ("28d", "year"))),
        ("overhead ratio, fastest runs", *(f"{f[f'fit_ratio_of_min_{w}']:.3f}" for w in ("28d", "year"))),
        ("cpu s project / bare, median", *(f"{f[f'fit_project_cpu_s_{w}']:.2f} / {f[f'fit_bare_cpu_s_{w}']:.2f}" for w in ("28d", "year"))),
        ("bare, nthread=1: wall / cpu s", f"{f['fit_bare_1thread_s_28d']:.2f} / {f['fit_bare_1thread_cpu_s_28d']:.2f}" if "fit_bare_1thread_s_28d" in f else "-", "-"),
        ("best iteration", f["fit_best_iteration_28d"], f["fit_best_iteration_year"]),
        ("slice to best rounds s", *(f"{f[f'fit_slice_s_{w}']:.4f}" for w in ("28d", "year"))),
        ("same model as bare", f["fit_same_model_28d"], f["fit_same_model_year"]),
        ("search budget (trials, timeout s)", f"{s28['requested_trials']}, {s28['timeout_s']:.0f}",
         f"{syear['requested_trials']}, {syear['timeout_s']:.0f}" if syear else "-"),
        ("search trials (done/pruned)", f"{s28['n_trials']} ({s28['n_complete']}/{s28['n_pruned']})",
         f"{syear['n_trials']} ({syear['n_complete']}/{syear['n_pruned']})" if syear else "-"),
        ("search wall s", f"{s28['seconds']:.1f}", f"{syear['seconds']:.1f}" if syear else "-"),
        ("trials / min", f"{s28['trials_per_min']:.1f}", f"{syear['trials_per_min']:.2f}" if syear else "-"),
    ]  # fmt: skip
    print()
    print(f"{'':36} {'28-day window':>16} {'year (364 d)':>16}")
    for name, a, b in rows:
        print(f"{name:36} {a!s:>16} {b!s:>16}")
    print()
    print(f"xgboost nthread (pipeline.yaml)            {f['xgboost_nthread']}")
    print(
        f"OMP_WAIT_POLICY / OMP_NUM_THREADS          {f['omp_wait_policy'] or '-'} / {f['omp_num_threads'] or '-'}"
    )
    print(f"MLflow calls of one trial (empty run)      {f['mlflow_calls_per_trial_s'] * 1000:.0f} ms")
    print(f"trial run states (trial_state->MLflow)     28d {s28['trial_states']}")
    print(f"model_training tasks, 28-day window, {SEARCH_TRIALS} trials (target ≤ {TARGET_TASK_S:.0f} s):")
    print(f"  train_candidate                          {task['train_s']:.1f} s")
    print(f"    of which search (first→last trial run) {task['search_span_s']:.1f} s")
    print(f"    of which final fit                     {task['final_fit_seconds']:.2f} s")
    print(f"  register_candidate                       {task['register_s']:.1f} s")
    print(f"  both                                     {task['total_s']:.1f} s")
    print(
        f"load average: start {f['loadavg_start']}, measuring from {f['loadavg_measure_start']}, "
        f"end {f['loadavg_end']} ({f['cpus']} cpus); set-up {f['setup_s']:.1f} s"
    )
    return {
        "fit_overhead_ratio": round(f["fit_ratio_28d"], 4),
        "fit_overhead_ratio_year": round(f["fit_ratio_year"], 4),
        "trials_per_min": round(s28["trials_per_min"], 3),
        "trials_per_min_year": round(syear["trials_per_min"], 3) if syear else None,
        "task_20_trials_28d_s": round(task["total_s"], 2),
        "train_candidate_s": round(task["train_s"], 2),
        "register_candidate_s": round(task["register_s"], 2),
        **{k: v for k, v in f.items() if k not in ("search_28d", "search_year", "task_28d")},
        "search_28d": s28,
        "search_year": syear,
        "task_28d": task,
    }


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def main() -> int:
    args = parse_args()
    with terminate_as_exit():
        base = Path(tempfile.mkdtemp(prefix="mlp-bench-training-"))
        try:
            figures = bench(base, args)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    summary = report(figures)
    print(json.dumps(rounded(summary), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
