"""The embedded stack: Airflow 3 (api-server, scheduler, dag-processor, triggerer) and MLflow
as local processes, with every piece of state under ``MLP_STATE_DIR`` (``.local/``).

``up`` is idempotent (running services are left alone), waits for health with a timeout and
names the process and its log file when something fails; ``down`` stops exactly the process
groups it started (checked against the recorded command line).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlpipeline import secrets as product_secrets
from mlpipeline.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service could not start, is unhealthy, or its port is taken."""


# --------------------------------------------------------------------------------------
# Layout and environment
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackPaths:
    state_dir: Path

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def secrets_file(self) -> Path:
        return product_secrets.secrets_file(self.state_dir)

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json"

    def ensure(self) -> None:
        for path in (self.airflow_home, self.mlflow_dir / "artifacts", self.run_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)


def venv_bin() -> Path:
    """Directory of the running interpreter's scripts (``.venv/bin``)."""
    return Path(sys.executable).parent


def load_or_create_secrets(paths: StackPaths, settings: Settings) -> dict[str, str]:
    """Secrets generated once per state dir (:mod:`mlpipeline.secrets`), and the Airflow login."""
    paths.ensure()
    stored = product_secrets.load_or_create(paths.state_dir, settings)
    # SimpleAuthManager keeps a user's password once it is in this file: writing it fixes the login.
    paths.passwords_file.write_text(json.dumps({settings.admin_user: stored["admin_password"]}))
    paths.passwords_file.chmod(0o600)
    return stored


def airflow_environment(
    settings: Settings,
    airflow_home: Path,
    sql_alchemy_conn: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables that configure Airflow for this project (embedded defaults)."""
    airflow_home = airflow_home.resolve()
    conn = sql_alchemy_conn or f"sqlite:///{airflow_home / 'airflow.db'}"
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(settings.parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
            airflow_home / "simple_auth_manager_passwords.json"
        ),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        # A 2-core box: one parsing process (8 small files, ~0.1 s each: bench/dag_parse.py), a
        # re-parse every 30 s at most; the CPU goes to tasks. Asset-triggered runs and task
        # hand-offs do not wait for parsing: the scheduler loop (idle sleep 1 s) creates them.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "PYTHONPATH": str(PROJECT_ROOT / "include"),
        "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        # Connections: the embedded defaults; a user's environment (or .env) overrides them.
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(spark_connection(settings)),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
            {"conn_type": "http", "host": settings.host, "port": settings.mlflow_port, "schema": "http"}
        ),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws"}),
        "MLP_STATE_DIR": str(settings.state_dir),
        # Warm task processes: the scheduler imports these before forking its LocalExecutor
        # workers (plugins/mlpipeline_airflow/warm_tasks.py).
        "MLP_PRELOAD_MODULES": settings.preload_modules,
        "MLP_MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri,
        "MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri,
        # Tasks and services are never interactive: no artifact-download progress bars in their logs.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "NO_PROXY": "127.0.0.1,localhost",
        # XGBoost's OpenMP threads spin while idle by default; on a shared 2-core machine that
        # made fits 10-40x slower whenever another process wanted a core (bench/training.py).
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for key in ("AIRFLOW_CONN_SPARK_DEFAULT", "AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def spark_connection(settings: Settings) -> dict:
    """``spark_default``: the stack's Spark Connect server, or spark-submit to ``local[2]``."""
    if settings.spark_connect:
        return {"conn_type": "spark_connect", "host": settings.host, "port": settings.spark_connect_port}
    return {"conn_type": "spark", "host": "local[2]"}


def spark_connect_service(settings: Settings, paths: StackPaths) -> Service:
    """A Spark Connect server (``local[2]``) in the foreground, from the pyspark package itself.

    One warm driver JVM for every dataset job of the stack: a job connects in ~1 s instead of
    starting its own JVM (6-20 s). Its work, log and pid directories live under the state dir.
    """
    import importlib.util

    spark_home = Path(importlib.util.find_spec("pyspark").origin).parent
    spark_dir = (paths.state_dir / "spark").resolve()
    confs = {
        "spark.connect.grpc.binding.address": settings.host,
        "spark.connect.grpc.binding.port": str(settings.spark_connect_port),
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.local.dir": str(spark_dir / "tmp"),
        "spark.sql.warehouse.dir": str(spark_dir / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={spark_dir / 'derby'}",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    }
    argv = [str(spark_home / "sbin" / "start-connect-server.sh"), "--wait", "--master", "local[2]"]
    argv += ["--driver-memory", "2g"]
    for key, value in confs.items():
        argv += ["--conf", f"{key}={value}"]
    return Service(
        "spark-connect",
        argv,
        port=settings.spark_connect_port,
        health_url=f"tcp://{settings.host}:{settings.spark_connect_port}",
        env={
            "SPARK_HOME": str(spark_home),
            "SPARK_LOG_DIR": str(spark_dir / "logs"),
            "SPARK_PID_DIR": str(spark_dir / "run"),
            "PYSPARK_PYTHON": sys.executable,
            "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )


# --------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    port: int | None = None
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def services(settings: Settings, paths: StackPaths) -> list[Service]:
    """The embedded stack, in start order."""
    bin_dir = venv_bin()
    secrets_ = load_or_create_secrets(paths, settings)
    af_env = airflow_environment(
        settings,
        paths.airflow_home,
        extra={
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": secrets_["api_secret_key"],
        },
    )
    mlflow_db = (paths.mlflow_dir / "mlflow.db").resolve()
    host = settings.host
    spark = [spark_connect_service(settings, paths)] if settings.spark_connect else []
    return [
        *spark,
        Service(
            "mlflow",
            [
                str(bin_dir / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{mlflow_db}",
                "--artifacts-destination",
                str((paths.mlflow_dir / "artifacts").resolve()),
                "--host",
                host,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            port=settings.mlflow_port,
            health_url=f"{settings.mlflow_url}/health",
            # The job runner (GenAI evaluation jobs) starts ~7 huey worker processes: not needed here.
            env={"PATH": af_env["PATH"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        Service(
            "airflow-api-server",
            [str(bin_dir / "airflow"), "api-server", "--host", host, "--port", str(settings.airflow_port)],
            port=settings.airflow_port,
            health_url=f"{settings.airflow_url}/api/v2/monitor/health",
            env=af_env,
        ),
        Service("airflow-scheduler", [str(bin_dir / "airflow"), "scheduler"], env=af_env),
        Service(
            "model-server",
            [str(bin_dir / "python"), "-m", "mlpipeline.serving"],
            port=settings.serving_port,
            health_url=f"{settings.serving_url}/health",
            env=af_env,
        ),
        Service("airflow-dag-processor", [str(bin_dir / "airflow"), "dag-processor"], env=af_env),
        Service("airflow-triggerer", [str(bin_dir / "airflow"), "triggerer"], env=af_env),
    ]


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot): with the pid, a unique process identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Running:
    pid: int
    argv: list[str]


def _pid_file(paths: StackPaths, service: Service) -> Path:
    return paths.run_dir / f"{service.name}.json"


def log_file(paths: StackPaths, service_name: str) -> Path:
    return paths.log_dir / f"{service_name}.log"


def running(paths: StackPaths, service: Service) -> Running | None:
    """The live process this stack started for ``service`` (checked by command line)."""
    pid_file = _pid_file(paths, service)
    if not pid_file.exists():
        return None
    record = json.loads(pid_file.read_text())
    pid, argv = int(record["pid"]), list(record["argv"])
    # A pid alone may have been reused by another program: the start time must match too.
    if _start_ticks(pid) != record.get("start_ticks"):
        pid_file.unlink(missing_ok=True)
        return None
    return Running(pid, argv)


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log yet)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(service: Service, paths: StackPaths, settings: Settings) -> Running:
    """Start ``service`` detached in its own process group (no-op when already running)."""
    current = running(paths, service)
    if current:
        return current
    if service.port is not None and not _port_is_free(settings.host, service.port):
        raise StackError(
            f"{service.name}: port {settings.host}:{service.port} is taken by another process; "
            f"stop it or choose another port in .env (see .env.example)"
        )
    log_path = log_file(paths, service.name)
    env = {**os.environ, **service.env}
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {' '.join(service.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            service.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(PROJECT_ROOT),
            start_new_session=True,
        )
    record = {"pid": proc.pid, "start_ticks": _start_ticks(proc.pid), "argv": service.argv}
    _pid_file(paths, service).write_text(json.dumps(record))
    return Running(proc.pid, service.argv)


def wait_healthy(service: Service, paths: StackPaths, timeout_s: float) -> None:
    """Wait until ``service`` answers its health URL (or at least stays up)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    log_path = log_file(paths, service.name)
    last_error = ""
    while time.monotonic() < deadline:
        if running(paths, service) is None:
            raise StackError(
                f"{service.name} exited during start-up; its log is {log_path}:\n{_tail(log_path)}"
            )
        if service.health_url is None:
            return
        if service.health_url.startswith("tcp://"):
            host, port = service.health_url.removeprefix("tcp://").rsplit(":", 1)
            if _listening(host, int(port)):
                return  # a gRPC server has no HTTP health URL: accepting connections is healthy
            last_error = "not listening yet"
            time.sleep(1)
            continue
        try:
            response = httpx.get(service.health_url, timeout=3)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last_error = f"{type(err).__name__}: {err}"
        time.sleep(1)
    raise StackError(
        f"{service.name} not healthy after {timeout_s:.0f}s ({service.health_url}: {last_error}); "
        f"its log is {log_path}:\n{_tail(log_path)}"
    )


def wait_airflow_components(settings: Settings, timeout_s: float) -> dict:
    """Wait until the api-server reports scheduler, triggerer and dag-processor healthy."""
    import httpx

    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=3).json()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if all((status.get(p) or {}).get("status") == "healthy" for p in parts):
                return status
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise StackError(f"Airflow components not all healthy after {timeout_s:.0f}s: {status}")


def migrate_airflow_db(env: dict[str, str], paths: StackPaths) -> None:
    """``airflow db migrate`` (idempotent), logged to ``logs/airflow-db-migrate.log``."""
    log_path = log_file(paths, "airflow-db-migrate")
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [str(venv_bin() / "airflow"), "db", "migrate"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=str(PROJECT_ROOT),
            check=False,
        )
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed; its log is {log_path}:\n{_tail(log_path)}")
    ensure_pools(env, log_path)


def ensure_pools(env: dict[str, str], log_path: Path) -> None:
    """Pool ``champion_alias`` (one slot): alias moves of deployment and rollback never interleave."""
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [str(venv_bin() / "airflow"), "pools", "set", "champion_alias", "1", "one champion alias move at a time"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=str(PROJECT_ROOT), check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"creating pool champion_alias failed; see {log_path}")


def up(settings: Settings) -> list[tuple[Service, Running]]:
    """Start every service that is not running, then wait for all of them to be healthy."""
    paths = StackPaths(settings.state_dir)
    paths.ensure()
    stack = services(settings, paths)
    api = next(s for s in stack if s.name == "airflow-api-server")
    if running(paths, api) is None:
        migrate_airflow_db(api.env, paths)
    started = [(service, start(service, paths, settings)) for service in stack]
    for service, _ in started:
        wait_healthy(service, paths, settings.start_timeout_s)
    wait_airflow_components(settings, settings.start_timeout_s)
    return started


def revive(settings: Settings) -> list[str]:
    """Restart the services of this stack whose process died (a restart policy, as compose's).

    Only services that were started and not stopped (their pid file is still there) are
    restarted. Seen here: Airflow 3.3.2's scheduler on SQLite can exit on a ``StaleDataError``
    when the API server creates a backfill's runs while it schedules; restarted, it carries on.
    """
    paths = StackPaths(settings.state_dir)
    restarted = []
    for service in services(settings, paths):
        if _pid_file(paths, service).exists() and running(paths, service) is None:
            for pid in _reap_children():
                log.debug("reaped %d", pid)
            start(service, paths, settings)
            restarted.append(service.name)
    return restarted


def _reap_children() -> list[int]:
    """Collect exited children (services started by this process) so they leave no zombie."""
    reaped = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)


def down(settings: Settings, grace_s: float = 20) -> list[str]:
    """Stop exactly the process groups this stack started; return the names stopped."""
    paths = StackPaths(settings.state_dir)
    if not paths.run_dir.exists():
        return []
    stopped = []
    for pid_file in sorted(paths.run_dir.glob("*.json")):
        service = Service(pid_file.stem, json.loads(pid_file.read_text())["argv"])
        proc = running(paths, service)
        if proc is None:
            pid_file.unlink(missing_ok=True)
            continue
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.3)
        if _group_alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        stopped.append(service.name)
    return stopped


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name: state ppid pgrp ...; skip zombies.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def status(settings: Settings) -> list[dict[str, object]]:
    """One row per service: running or not, pid, port, log file."""
    paths = StackPaths(settings.state_dir)
    paths.ensure()
    rows = []
    for service in services(settings, paths):
        proc = running(paths, service)
        rows.append(
            {
                "service": service.name,
                "state": "running" if proc else "stopped",
                "pid": proc.pid if proc else None,
                "url": service.health_url or "",
                "log": str(log_file(paths, service.name)),
            }
        )
    return rows
