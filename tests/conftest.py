"""Test session set-up: a temporary AIRFLOW_HOME and lake, env-var connections, a migrated
metadata DB (SQLite, or PostgreSQL with ``--metadata-db=postgres``), an S3-protocol server.

Airflow reads its configuration when first imported, so the environment is set in
``pytest_configure``, before any test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT / "plugins"))  # Airflow puts the plugins folder on sys.path

_SESSION: dict[str, object] = {}

from stack_fixtures import (  # noqa: E402
    demo_stack,  # noqa: F401  (the shared running stack, a session fixture)
    distributed_stack,  # noqa: F401  (the distributed profile's running stack)
    start_background_demo,
    stop_unclaimed_demo,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--metadata-db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Airflow metadata database for the tests marked 'metadata'",
    )


def _postgres_admin_url() -> str:
    return os.environ.get("MLP_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _create_postgres_db() -> str:
    """A fresh database for this session; returns its SQLAlchemy URL."""
    import sqlalchemy as sa

    admin_url = _postgres_admin_url()
    name = f"mlp_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as err:
        raise pytest.UsageError(
            f"--metadata-db=postgres: cannot create a database at {admin_url} ({err}); "
            "start PostgreSQL or set MLP_TEST_POSTGRES_URL"
        ) from err
    finally:
        engine.dispose()
    _SESSION["postgres_db"] = name
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_postgres_db(name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(_postgres_admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def pytest_configure(config: pytest.Config) -> None:
    from mlpipeline.local.stack import airflow_environment
    from mlpipeline.settings import load_settings

    base = Path(tempfile.mkdtemp(prefix="mlp-tests-"))
    _SESSION["base"] = base
    for key in [k for k in os.environ if k.startswith("MLP_")]:
        del os.environ[key]
    os.environ["MLP_STATE_DIR"] = str(base / "state")
    os.environ["MLP_LAKE_URI"] = f"file://{base / 'lake'}"
    settings = load_settings()
    db_url = None
    if config.getoption("--metadata-db") == "postgres":
        db_url = _create_postgres_db()
    moto_port = free_port()
    _SESSION["moto_port"] = moto_port
    env = airflow_environment(settings, base / "airflow", sql_alchemy_conn=db_url)
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": f"http://127.0.0.1:{moto_port}", "region_name": "us-east-1"},
        }
    )
    env["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    # Dataset DAG tests: spark-submit to local[2] unless the spark_connect_server fixture runs.
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": "local[2]"})
    # Nothing listens here: tests that need MLflow use the mlflow_server fixture.
    closed = free_port()
    env["MLP_MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{closed}"
    env["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": closed, "schema": "http"}
    )
    os.environ.update(env)
    (base / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Stack tests selected: start the shared stack's demo now, beside the other tests."""
    if session.config.option.collectonly:
        return
    for profile, marker in (("embedded", "stack"), ("distributed", "distributed")):
        if any(item.get_closest_marker(marker) for item in session.items):
            start_background_demo(session_dir_path() / f"stack-{profile}", profile)


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_unclaimed_demo()
    connect = _SESSION.get("spark_connect")
    if connect is not None:
        from mlpipeline.local import stack

        stack.down(connect)
    for name in ("moto_proc", "mlflow_proc"):
        proc = _SESSION.get(name)
        if isinstance(proc, subprocess.Popen):
            proc.terminate()
            proc.wait(timeout=30)
    if "postgres_db" in _SESSION:
        _drop_postgres_db(str(_SESSION["postgres_db"]))
    base = _SESSION.get("base")
    if isinstance(base, Path):
        shutil.rmtree(base, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--metadata-db") == "postgres":
        # The PostgreSQL pass only re-runs what touches the metadata DB.
        items[:] = [item for item in items if item.get_closest_marker("metadata")]

    # The tests on the shared running stack go last (in file order): the stack starts once, and
    # its session-scoped fixture stops it right after them, at the end of the session.
    # The distributed stack's tests come just before them: its stack (module-scoped) stops right
    # after its tests, and the browser tests' Playwright loop is not running yet (an S3 lake in
    # this process calls asyncio.run, which a running loop refuses).
    def rank(item: pytest.Item) -> int:
        return 1 if item.get_closest_marker("distributed") else 2 if item.get_closest_marker("stack") else 0

    items.sort(key=rank)  # stable: file order within each group


def session_dir_path() -> Path:
    return Path(str(_SESSION["base"]))


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return session_dir_path()


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated Airflow metadata DB (``airflow db migrate`` once per session)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stdout}\n{result.stderr}"
    from mlpipeline.local.stack import ensure_pools

    ensure_pools(os.environ.copy(), session_dir_path() / "pools.log")
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.fixture(scope="session")
def s3_server() -> str:
    """A moto S3 server on a free loopback port; returns its endpoint URL."""
    port = int(_SESSION["moto_port"])  # type: ignore[arg-type]
    log = open(Path(str(_SESSION["base"])) / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _SESSION["moto_proc"] = proc
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return endpoint
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not start on {endpoint}")


@pytest.fixture(scope="session")
def s3_bucket(s3_server: str) -> str:
    """A bucket on the S3-protocol server, created through the real ``aws_default`` connection."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="aws_default")
    name = "mlp-test-lake"
    if not hook.check_for_bucket(name):
        hook.create_bucket(bucket_name=name)
    return name


@pytest.fixture(params=["file", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty lake on a local directory and on the S3-protocol server."""
    from mlpipeline.lake import Lake

    if request.param == "file":
        return Lake.from_uri(f"file://{tmp_path / 'lake'}")
    bucket = request.getfixturevalue("s3_bucket")
    return Lake.from_uri(f"s3://{bucket}/{uuid.uuid4().hex[:8]}", aws_conn_id="aws_default")


@pytest.fixture
def file_lake(tmp_path: Path, settings_env):
    """An empty lake on a local directory, which the settings (``MLP_LAKE_URI``) point at too."""
    from mlpipeline.lake import Lake

    settings_env(lake_uri=f"file://{tmp_path}/lake")
    return Lake.from_uri(f"file://{tmp_path}/lake")


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    """Set ``MLP_*`` variables for one test and reload the cached settings."""
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings

    def apply(**values: str):
        for key, value in values.items():
            monkeypatch.setenv(f"MLP_{key.upper()}", str(value))
        get_settings.cache_clear()
        get_pipeline_config.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()
    get_pipeline_config.cache_clear()


@pytest.fixture(scope="session")
def spark_connect_server(session_dir: Path) -> str:
    """The embedded stack's Spark Connect service, once per session; ``spark_default`` points at it.

    Every dataset DAG test then submits its job as the stack does (a warm JVM) instead of paying a
    cold ``spark-submit`` per build; the spark-submit path runs on the distributed profile's
    standalone cluster (``tests/e2e/test_distributed_stack.py``). Stopped at the end of the session.
    """
    from mlpipeline.local import stack
    from mlpipeline.settings import load_settings

    settings = load_settings(
        {"MLP_STATE_DIR": str(session_dir / "spark-connect"), "MLP_SPARK_CONNECT_PORT": str(free_port())}
    )
    paths = stack.StackPaths(settings.state_dir)
    paths.ensure()
    service = stack.spark_connect_service(settings, paths)
    _SESSION["spark_connect"] = settings
    stack.start(service, paths, settings)
    stack.wait_healthy(service, paths, timeout_s=240)
    os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps(stack.spark_connection(settings))
    return f"sc://{settings.host}:{settings.spark_connect_port}"


@pytest.fixture(scope="session")
def mlflow_server(session_dir: Path) -> str:
    """A real MLflow tracking server (SQLite + local artifacts) on a free loopback port."""
    import httpx

    port = free_port()
    root = session_dir / "mlflow"
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    _SESSION["mlflow_proc"] = proc
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"MLflow server did not start; see {root / 'server.log'}")
    os.environ["MLP_MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"}
    )
    from mlpipeline.settings import get_settings

    get_settings.cache_clear()
    return uri
