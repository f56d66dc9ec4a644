"""The local stacks: every service a local process, every piece of state under ``MLP_STATE_DIR``.

``MLP_STACK=embedded`` (default): Airflow 3 (api-server, scheduler, dag-processor, triggerer) on
SQLite with the LocalExecutor, MLflow on SQLite, a Spark Connect server, a file lake.
``MLP_STACK=distributed``: the production shape (``docker-compose.yaml``) without Docker —
Airflow on PostgreSQL with the CeleryExecutor (Redis) and several Celery workers, an S3 server
holding the lake and MLflow's artifacts, MLflow on PostgreSQL, a Spark standalone master and
workers; PostgreSQL and Redis are the machine's own (``MLP_POSTGRES_URL``, ``MLP_REDIS_URL``).

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
    # Only when it changes, and whole (the api-server reads it at every login: a truncated file
    # in between is a 401).
    content = json.dumps({settings.admin_user: stored["admin_password"]})
    current = paths.passwords_file.read_text() if paths.passwords_file.exists() else None
    if current != content:
        fresh = paths.passwords_file.with_suffix(".json.new")
        fresh.write_text(content)
        fresh.chmod(0o600)
        fresh.replace(paths.passwords_file)
    return stored


#: Loggers too chatty at INFO: the AWS provider says "credentials retrieved" at every S3 connection.
QUIET_LOGGERS = "airflow.providers.amazon.aws.utils.connection_wrapper=WARNING"


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
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": QUIET_LOGGERS,
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
    if settings.distributed:
        env.update(distributed_airflow_environment(settings))
    for key in ("AIRFLOW_CONN_SPARK_DEFAULT", "AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def distributed_airflow_environment(settings: Settings) -> dict[str, str]:
    """What the distributed profile changes: PostgreSQL, Celery on Redis, the S3 lake."""
    from mlpipeline.local import s3_server

    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.database_url("airflow", "postgresql+psycopg2"),
        "AIRFLOW__CELERY__BROKER_URL": settings.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": settings.database_url("airflow", "db+postgresql"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.celery_concurrency),
        # A task whose worker died is re-queued, not lost (the broker keeps it until acked)…
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        # …and a running task that stops heartbeating (its worker was killed) is failed after a
        # minute, not five, then retried on a live worker (its DAG's retries).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "mlpipeline.local.stack.worker_hostname",
        "MLP_LAKE_URI": settings.resolved_lake_uri,
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_server.ACCESS_KEY,
                "password": s3_server.SECRET_KEY,
                "extra": {"endpoint_url": settings.resolved_s3_endpoint, "region_name": s3_server.REGION},
            }
        ),
    }


def client_environment(settings: Settings) -> dict[str, str]:
    """What a process outside the stack (the CLI, the demo, a test) needs to reach its lake."""
    if not settings.distributed:
        return {}
    env = distributed_airflow_environment(settings)
    return {key: env[key] for key in ("MLP_LAKE_URI", "AIRFLOW_CONN_AWS_DEFAULT")}


#: Set on each Celery worker: the name its task instances record (Airflow's ``hostname``), so
#: the UI and the API tell the workers of one machine apart.
WORKER_NAME_ENV = "MLPIPELINE_WORKER_NAME"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the distributed profile: the worker's name, or the FQDN."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def spark_connection(settings: Settings) -> dict:
    """``spark_default``: the cluster's master (distributed), the stack's Spark Connect server,
    or spark-submit to ``local[2]``."""
    if settings.distributed:
        return {"conn_type": "spark", "host": f"spark://{settings.host}", "port": settings.spark_master_port}
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
    """The stack of ``settings.stack``, in start order."""
    secrets_ = load_or_create_secrets(paths, settings)
    af_env = airflow_environment(
        settings,
        paths.airflow_home,
        extra={
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": secrets_["api_secret_key"],
        },
    )
    if settings.distributed:
        first = [*s3_services(settings, paths), *spark_cluster_services(settings, paths)]
        mlflow_store = settings.database_url("mlflow")
        artifacts = f"s3://{settings.s3_bucket}/mlflow"
        workers = celery_worker_services(settings, af_env)
    else:
        first = [spark_connect_service(settings, paths)] if settings.spark_connect else []
        mlflow_store = f"sqlite:///{(paths.mlflow_dir / 'mlflow.db').resolve()}"
        artifacts = str((paths.mlflow_dir / "artifacts").resolve())
        workers = []
    return [
        *first,
        mlflow_service(settings, mlflow_store, artifacts, af_env),
        airflow_service("airflow-api-server", ["api-server", "--host", settings.host, "--port",
                                               str(settings.airflow_port)], af_env,
                        port=settings.airflow_port, health_url=f"{settings.airflow_url}/api/v2/monitor/health"),
        # Under Celery the scheduler runs no task: only the workers preload (warm_tasks.py).
        airflow_service("airflow-scheduler", ["scheduler"],
                        {**af_env, "MLP_PRELOAD_MODULES": ""} if workers else af_env),
        *workers,
        Service(
            "model-server",
            [str(venv_bin() / "python"), "-m", "mlpipeline.serving"],
            port=settings.serving_port,
            health_url=f"{settings.serving_url}/health",
            env=af_env,
        ),
        airflow_service("airflow-dag-processor", ["dag-processor"], af_env),
        airflow_service("airflow-triggerer", ["triggerer"], af_env),
    ]  # fmt: skip


def airflow_service(name: str, args: list[str], env: dict[str, str], **kwargs) -> Service:
    return Service(name, [str(venv_bin() / "airflow"), *args], env=env, **kwargs)


def mlflow_service(settings: Settings, store: str, artifacts: str, af_env: dict[str, str]) -> Service:
    """The MLflow tracking server; it proxies artifacts, so tasks need no storage credentials."""
    env = {"PATH": af_env["PATH"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if artifacts.startswith("s3://"):
        env.update(s3_client_environment(settings))
    return Service(
        "mlflow",
        [str(venv_bin() / "mlflow"), "server", "--backend-store-uri", store, "--artifacts-destination",
         artifacts, "--host", settings.host, "--port", str(settings.mlflow_port), "--workers", "1"],
        port=settings.mlflow_port,
        health_url=f"{settings.mlflow_url}/health",
        # The job runner (GenAI evaluation jobs) starts ~7 huey worker processes: not needed here.
        env=env,
    )  # fmt: skip


def s3_client_environment(settings: Settings) -> dict[str, str]:
    """boto3's view of the stack's S3 (MLflow's artifact store)."""
    from mlpipeline.local import s3_server

    return {
        "MLFLOW_S3_ENDPOINT_URL": settings.resolved_s3_endpoint,
        "AWS_ACCESS_KEY_ID": s3_server.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3_server.SECRET_KEY,
        "AWS_DEFAULT_REGION": s3_server.REGION,
    }


def s3_services(settings: Settings, paths: StackPaths) -> list[Service]:
    """The stack's own S3 server (none when ``MLP_S3_ENDPOINT_URL`` names another)."""
    if settings.s3_endpoint_url:
        return []
    data = (paths.state_dir / "s3" / "data").resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    return [
        Service(
            "s3",
            [str(venv_bin() / "python"), "-m", "mlpipeline.local.s3_server", "--host", settings.host,
             "--port", str(settings.s3_port), "--data", str(data), "--bucket", settings.s3_bucket],
            port=settings.s3_port,
            health_url=f"file://{data.parent / 'data.ready'}",
            env={"PYTHONPATH": str(PROJECT_ROOT / "include")},
        )
    ]  # fmt: skip


def _spark_home() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("pyspark").origin).parent


def spark_cluster_services(settings: Settings, paths: StackPaths) -> list[Service]:
    """A Spark standalone master and ``spark_workers`` workers (1 core, 2 GB each) from the
    pyspark package; ``spark_default`` submits the dataset job to the master."""
    spark_home = _spark_home()
    spark_dir = (paths.state_dir / "spark").resolve()
    env = {"SPARK_HOME": str(spark_home), "SPARK_LOG_DIR": str(spark_dir / "logs"),
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}  # fmt: skip
    spark_class = str(spark_home / "bin" / "spark-class")
    master = f"spark://{settings.host}:{settings.spark_master_port}"
    cluster = [
        Service(
            "spark-master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", settings.host,
             "--port", str(settings.spark_master_port), "--webui-port", "0"],
            port=settings.spark_master_port,
            health_url=f"tcp://{settings.host}:{settings.spark_master_port}",
            env=env,
        )
    ]  # fmt: skip
    for number in range(1, settings.spark_workers + 1):
        cluster.append(
            Service(
                f"spark-worker-{number}",
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", settings.host,
                 "--cores", "1", "--memory", "2g", "--webui-port", "0",
                 "--work-dir", str(spark_dir / f"work-{number}")],
                env=env,
            )
        )  # fmt: skip
    return cluster


def celery_worker_services(settings: Settings, af_env: dict[str, str]) -> list[Service]:
    """``celery_workers`` Celery workers of ``celery_concurrency`` slots each, named apart.

    They share this machine's disk, so they serve no logs of their own (``--skip-serve-logs``):
    the api-server reads task logs from the common log folder, as the compose file's shared
    ``logs`` volume does.
    """
    return [
        airflow_service(
            f"airflow-worker-{number}",
            ["celery", "worker", "--concurrency", str(settings.celery_concurrency),
             "--celery-hostname", f"worker-{number}@%h", "--skip-serve-logs"],
            {**af_env, WORKER_NAME_ENV: f"worker-{number}"},
        )
        for number in range(1, settings.celery_workers + 1)
    ]  # fmt: skip


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
    # The services write the bytecode of the project's own modules (git-ignored __pycache__/);
    # with PYTHONDONTWRITEBYTECODE (CI, these machines) every task recompiled them at import.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
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
        if service.health_url.startswith("file://"):
            if Path(service.health_url.removeprefix("file://")).exists():
                return  # the service writes this marker once it is ready (the S3 server's restore)
            last_error = "not ready yet"
            time.sleep(1)
            continue
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


def ensure_databases(settings: Settings) -> None:
    """Create the distributed stack's PostgreSQL databases when missing (compose's init step)."""
    import sqlalchemy as sa

    admin_url = settings.database_url("airflow", "postgresql+psycopg2").rsplit("/", 1)[0] + "/postgres"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for purpose in ("airflow", "mlflow"):
                name = f"{settings.database_prefix}_{purpose}"
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
                if exists.first() is None:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as err:
        raise StackError(
            f"PostgreSQL at {settings.postgres_url} is not reachable ({err.orig}); start it or set MLP_POSTGRES_URL"
        ) from None
    finally:
        engine.dispose()


def check_redis(settings: Settings) -> None:
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as err:
        raise StackError(
            f"Redis at {settings.redis_url} is not reachable ({err}); start it or set MLP_REDIS_URL"
        ) from None


def _profile_file(paths: StackPaths) -> Path:
    return paths.state_dir / "stack-profile"


def check_profile(settings: Settings, paths: StackPaths) -> None:
    """One state dir holds one kind of stack: refuse to start the other kind beside it."""
    profile = _profile_file(paths)
    recorded = profile.read_text().strip() if profile.exists() else None
    if recorded and recorded != settings.stack and any(paths.run_dir.glob("*.json")):
        raise StackError(
            f"the {recorded} stack is running in {paths.state_dir}; stop it (make down) before starting "
            f"the {settings.stack} one, or set MLP_STATE_DIR to another folder"
        )
    if recorded and recorded != settings.stack:
        raise StackError(
            f"{paths.state_dir} holds a {recorded} stack's state (lake, registry, metadata); "
            f"use another MLP_STATE_DIR for the {settings.stack} stack"
        )
    profile.write_text(settings.stack)


def as_recorded(settings: Settings) -> Settings:
    """``settings`` with the profile this state dir was started with (``make status`` and
    ``make down`` name the right services whatever ``MLP_STACK`` says now)."""
    profile = _profile_file(StackPaths(settings.state_dir))
    recorded = profile.read_text().strip() if profile.exists() else ""
    if recorded in ("embedded", "distributed") and recorded != settings.stack:
        return settings.model_copy(update={"stack": recorded})
    return settings


def up(settings: Settings) -> list[tuple[Service, Running]]:
    """Start every service that is not running, then wait for all of them to be healthy."""
    paths = StackPaths(settings.state_dir)
    paths.ensure()
    check_profile(settings, paths)
    if settings.distributed:
        ensure_databases(settings)
        check_redis(settings)
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
    settings = as_recorded(settings)
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
    settings = as_recorded(settings)
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
