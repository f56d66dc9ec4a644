"""Static checks of the deployment files (no Docker engine needed).

* docker-compose.yaml validates against the compose specification (check-jsonschema's
  vendored schema, offline) and is internally consistent: services, images, environment,
  dependencies, health checks, volumes and the absence of literal secrets.
* Dockerfile passes hadolint and builds the image the way the project needs (lock file,
  pyspark reinstalled last, code copied, non-root user).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements-lock.txt"
BIN = Path(sys.executable).parent

PROJECT_IMAGE = "mlpipeline:latest"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "flower",
}
ONE_SHOT_SERVICES = {"airflow-init", "minio-init"}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mlflow",
    "spark-master",
    "spark-worker",
    "model-server",
}
# Settings a project service needs to reach the lake and MLflow.
PIPELINE_ENV = {
    "MLP_LAKE_URI",
    "MLP_MLFLOW_TRACKING_URI",
    "MLP_HOST",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
AIRFLOW_ENV = {
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW_CONN_AWS_DEFAULT",
    "AIRFLOW_CONN_SPARK_DEFAULT",
    "AIRFLOW_CONN_MLFLOW_DEFAULT",
}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|_KEY$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"[a-z0-9+.-]+://[^:/@\s]+:([^@\s]+)@", re.IGNORECASE)


# --------------------------------------------------------------------------- helpers


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    tool = BIN / name
    assert tool.is_file(), f"{tool} is missing: install the dev dependencies (requirements-dev-lock.txt)"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def is_interpolation(value: str) -> bool:
    """The whole value is one ``${VAR...}`` interpolation (so the real value comes from .env)."""
    match = INTERPOLATION.fullmatch(value)
    return match is not None


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of ``value`` with ``env`` (enough for this file's forms)."""
    marker = "\0"
    value = value.replace("$$", marker)

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"{name} is required: {arg}")
            return current
        return current or ""

    return INTERPOLATION.sub(substitute, value).replace(marker, "$")


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def all_strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in all_strings(k) + all_strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return []


def find_literal_secrets(compose: dict) -> list[str]:
    """Every place where a secret is written literally instead of as a ``${...}`` interpolation."""
    problems = []
    for name, service in (compose.get("services") or {}).items():
        for key, value in env_of(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE") and not is_interpolation(value):
                problems.append(f"{name}: {key}={value!r} is not a ${{...}} interpolation")
            if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
                conn = json.loads(value)
                password = str(conn.get("password", ""))
                if password and not is_interpolation(password):
                    problems.append(f"{name}: {key} has a literal password {password!r}")
    for text in all_strings(compose):
        for match in URL_CREDENTIALS.finditer(text):
            if not is_interpolation(match.group(1)):
                problems.append(f"URL with a literal password: {text!r}")
    return problems


def dependencies(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), " ".join(args.split())))
    return result


def lock_pin(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", LOCK.read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in {LOCK.name}"
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def project_services(services: dict[str, dict]) -> dict[str, dict]:
    return {n: s for n, s in services.items() if s.get("image") == PROJECT_IMAGE}


# Values for the required secrets when a test resolves interpolations.
TEST_ENV = {"AIRFLOW_JWT_SECRET": "jwt-test", "AIRFLOW_API_SECRET_KEY": "api-test"}


# ------------------------------------------------------------------ external validators


def test_compose_file_matches_the_compose_spec() -> None:
    proc = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert proc.returncode == 0, output_of(proc)


def test_compose_spec_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text("services:\n  web:\n    image: 42\n    restart: sometimes\n")
    proc = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(bad))
    assert proc.returncode != 0, "the validator accepted an invalid compose file:\n" + output_of(proc)


def test_dockerfile_passes_hadolint() -> None:
    proc = run_tool("hadolint", "--no-color", "--failure-threshold", "info", str(DOCKERFILE))
    assert proc.returncode == 0, output_of(proc)


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = run_tool("hadolint", "--no-color", str(bad))
    assert proc.returncode != 0, "hadolint accepted a bad Dockerfile:\n" + output_of(proc)


# ----------------------------------------------------------------------- compose: shape


def test_compose_has_no_version_key_and_all_services(compose: dict) -> None:
    assert "version" not in compose, "the top-level `version:` key is obsolete"
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"


def test_project_services_build_the_one_image(
    services: dict[str, dict], project_services: dict[str, dict]
) -> None:
    third_party = {"postgres", "redis", "minio", "minio-init"}
    expected = REQUIRED_SERVICES - third_party
    assert expected <= set(project_services), (
        f"not on {PROJECT_IMAGE}: {sorted(expected - set(project_services))}"
    )
    for name, service in project_services.items():
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", f"{name}: expected `build: .`, got {build!r}"
    assert DOCKERFILE.is_file()
    for name in third_party:
        image = services[name]["image"]
        assert ":" in image, f"{name}: pin the image tag ({image})"
        assert not image.endswith(":latest"), f"{name}: pin the image tag ({image})"


def test_project_services_have_the_environment_they_need(
    project_services: dict[str, dict],
) -> None:
    needs_pipeline_env = set(project_services) - {"spark-master", "mlflow"}
    for name in needs_pipeline_env:
        missing = PIPELINE_ENV - set(env_of(project_services[name]))
        assert not missing, f"{name} lacks pipeline settings {sorted(missing)}"
    for name in AIRFLOW_SERVICES:
        env = env_of(project_services[name])
        missing = AIRFLOW_ENV - set(env)
        assert not missing, f"{name} lacks Airflow settings {sorted(missing)}"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
    mlflow_env = env_of(project_services["mlflow"])
    for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert key in mlflow_env, f"mlflow lacks {key}"


def test_airflow_services_share_one_environment(services: dict[str, dict]) -> None:
    reference = env_of(services["airflow-scheduler"])
    for name in AIRFLOW_SERVICES:
        assert env_of(services[name]) == reference, f"{name} differs from airflow-scheduler"


def test_airflow_database_is_postgres(services: dict[str, dict]) -> None:
    from sqlalchemy.engine import make_url

    for name in AIRFLOW_SERVICES:
        raw = env_of(services[name])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        url = make_url(interpolate(raw, TEST_ENV))
        assert url.get_backend_name() == "postgresql", f"{name}: {raw}"
        assert url.host == "postgres", f"{name}: {raw}"
        assert url.database == "airflow", f"{name}: {raw}"
        assert url.host in services


def test_airflow_secrets_are_required_not_defaulted(services: dict[str, dict]) -> None:
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            match = INTERPOLATION.fullmatch(env[key])
            assert match, f"{name}: {key} is not an interpolation"
            assert match.group(2) == ":?", (
                f"{name}: {key} must be `${{VAR:?...}}` so a deployment never runs on a known key"
            )
            with pytest.raises(KeyError):
                interpolate(env[key], {})


def test_airflow_connections_point_at_compose_services(services: dict[str, dict]) -> None:
    env = {k: interpolate(v, TEST_ENV) for k, v in env_of(services["airflow-scheduler"]).items()}
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["conn_type"] == "aws"
    assert aws["login"], aws
    assert aws["password"], aws
    endpoint = urlsplit(aws["extra"]["endpoint_url"])
    assert endpoint.hostname == "minio", aws
    assert endpoint.port == 9000, aws

    spark = json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
    master_cmd = command_of(services["spark-master"])
    assert spark["conn_type"] == "spark"
    assert spark["host"] == "spark://spark-master", spark
    assert str(spark["port"]) == master_cmd[master_cmd.index("--port") + 1], (spark, master_cmd)

    mlflow = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    mlflow_cmd = command_of(services["mlflow"])
    assert mlflow["host"] == "mlflow"
    assert str(mlflow["port"]) == mlflow_cmd[mlflow_cmd.index("--port") + 1], (mlflow, mlflow_cmd)

    execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution_api.hostname == "airflow-apiserver", execution_api
    assert execution_api.path == "/execution/", execution_api
    assert f"{execution_api.port}" in " ".join(command_of(services["airflow-apiserver"]))


def test_pipeline_settings_are_accepted_by_the_config_module(
    project_services: dict[str, dict],
) -> None:
    """Unknown or malformed MLP_* variables make every pipeline process fail at start."""
    from mlpipeline.settings import load_settings

    for name, service in project_services.items():
        mlp = {k: interpolate(v, TEST_ENV) for k, v in env_of(service).items() if k.startswith("MLP_")}
        if mlp:
            settings = load_settings(mlp)  # raises SettingsError naming the variable
            assert settings.resolved_lake_uri.startswith("s3://"), name


def test_buckets_used_are_created_by_minio_init(services: dict[str, dict]) -> None:
    init_script = " ".join(command_of(services["minio-init"]))
    lake_bucket = urlsplit(env_of(services["airflow-scheduler"])["MLP_LAKE_URI"]).netloc
    mlflow_cmd = command_of(services["mlflow"])
    artifacts = mlflow_cmd[mlflow_cmd.index("--artifacts-destination") + 1]
    assert artifacts.startswith("s3://")
    for bucket in {lake_bucket, urlsplit(artifacts).netloc}:
        assert re.search(rf"mc mb (--ignore-existing )?\S+/{bucket}\b", init_script), (
            f"bucket {bucket!r} is not created by minio-init: {init_script}"
        )
    backend = mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql"), backend
    assert "@postgres:5432/mlflow" in backend, backend


def test_depends_on_targets_exist_and_conditions_make_sense(services: dict[str, dict]) -> None:
    for name, service in services.items():
        for target, condition in dependencies(service).items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} health, which has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT_SERVICES, f"{name} waits for long-running {target} to exit"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = dependencies(services[name])
        assert deps.get("airflow-init") == "service_completed_successfully", f"{name}: {deps}"
        assert deps.get("postgres") == "service_healthy", f"{name}: {deps}"
    assert dependencies(services["airflow-init"]).get("postgres") == "service_healthy"


def test_long_running_services_restart_and_have_healthchecks(services: dict[str, dict]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart", "no") == "no", f"one-shot {name} must not be restarted"
            continue
        assert service.get("restart") == "unless-stopped", f"{name}: restart={service.get('restart')!r}"
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


def test_healthchecks_probe_the_expected_endpoints(services: dict[str, dict]) -> None:
    def probe(name: str) -> str:
        test = services[name]["healthcheck"]["test"]
        return test if isinstance(test, str) else " ".join(test)

    assert "/api/v2/monitor/health" in probe("airflow-apiserver")
    assert "/health" in probe("mlflow")
    assert ":8000/health" in probe("model-server")
    assert "pg_isready" in probe("postgres")
    assert "redis-cli ping" in probe("redis")
    assert "inspect ping" in probe("airflow-worker")


def test_celery_topology(services: dict[str, dict]) -> None:
    """The official compose's Celery shape: Redis broker, results in the Airflow database,
    several workers, and one staging volume shared by the workers and the Spark workers."""
    from sqlalchemy.engine import make_url

    env = {k: interpolate(v, TEST_ENV) for k, v in env_of(services["airflow-scheduler"]).items()}
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    backend = make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    assert (backend.host, backend.database) == ("postgres", "airflow")
    assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "True"
    worker = services["airflow-worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert "celery worker" in " ".join(command_of(worker))
    assert dependencies(worker)["redis"] == "service_healthy"
    staging = env["MLP_STATE_DIR"]
    for name in ("airflow-worker", "spark-worker"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(staging) == "mlp-state", f"{name} does not share the staging volume: {mounts}"
    assert services["flower"]["profiles"] == ["flower"]


def test_no_literal_secrets(compose: dict) -> None:
    problems = find_literal_secrets(compose)
    assert not problems, "\n".join(problems)


def test_secret_scan_catches_literal_secrets() -> None:
    planted = {
        "services": {
            "a": {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
            "b": {"environment": ["AIRFLOW__API__SECRET_KEY=abc"]},
            "c": {"command": ["serve", "--db", "postgresql://u:hunter2@db/x"]},
            "d": {"environment": {"AIRFLOW_CONN_X": '{"conn_type":"aws","password":"hunter2"}'}},
            "ok": {"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-dev}"}},
        }
    }
    problems = find_literal_secrets(planted)
    flagged = " ".join(problems)
    assert len(problems) == 4, problems
    assert "ok:" not in flagged


def test_bind_mounts_exist_and_named_volumes_are_declared(compose: dict, services: dict[str, dict]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared"
    init_sql = (REPO / "deploy" / "postgres-init.sql").read_text()
    for database in ("airflow", "mlflow"):
        assert re.search(rf"CREATE DATABASE {database}\b", init_sql, re.IGNORECASE), database
    postgres_env = env_of(services["postgres"])
    # The image creates POSTGRES_DB itself; creating it again in the init SQL would abort init.
    assert postgres_env.get("POSTGRES_DB", postgres_env.get("POSTGRES_USER")) not in {"airflow", "mlflow"}


# ------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_dockerfile_base_image_is_pinned(instructions: list[tuple[str, str]]) -> None:
    bases = [args for op, args in instructions if op == "FROM"]
    assert bases == ["python:3.11-slim-bookworm"], bases


def test_dockerfile_installs_from_the_lock_file(instructions: list[tuple[str, str]]) -> None:
    runs = [args for op, args in instructions if op == "RUN"]
    installs = [r for r in runs if "uv pip install" in r or "pip install" in r]
    assert any(re.search(r"uv pip install --system -r \S*requirements-lock\.txt", r) for r in installs), (
        installs
    )
    loose = [r for r in installs if re.search(r"-r \S*(?<![\w-])requirements\.txt", r)]
    assert not loose, f"installs from the loose requirements.txt: {loose}"
    assert any(re.search(r"pip install --no-cache-dir uv==\d", r) for r in installs), "pin uv"


def test_dockerfile_reinstalls_pyspark_last_at_the_locked_version(
    instructions: list[tuple[str, str]],
) -> None:
    text = " && ".join(args for op, args in instructions if op == "RUN")
    lock_install = text.find("requirements-lock.txt")
    reinstall = re.search(r"uv pip install --system --reinstall --no-deps pyspark==(\S+)", text)
    assert reinstall, "pyspark must be reinstalled after the lock install (pyspark-client overlap)"
    assert lock_install != -1, "no install from requirements-lock.txt"
    assert reinstall.start() > lock_install, "pyspark is reinstalled before the lock install"
    assert reinstall.group(1) == lock_pin("pyspark")


def test_dockerfile_copies_requirements_before_code(instructions: list[tuple[str, str]]) -> None:
    copies = [(i, args) for i, (op, args) in enumerate(instructions) if op == "COPY"]
    install_at = next(
        i for i, (op, args) in enumerate(instructions) if op == "RUN" and "requirements-lock.txt" in args
    )
    before = [args for i, args in copies if i < install_at]
    assert before, "nothing is copied before the dependency install"
    assert all("requirements" in args.split()[0] for args in before), before
    for part in ("dags", "plugins", "include"):
        assert any(
            re.fullmatch(rf"{part}/? /opt/pipeline/{part}/?", args) and i > install_at for i, args in copies
        ), f"{part}/ is not copied to /opt/pipeline/{part}/ after the dependency layer: {copies}"


def test_dockerfile_environment_and_user(instructions: list[tuple[str, str]]) -> None:
    env_text = " ".join(args for op, args in instructions if op == "ENV")
    for expected in (
        "PYTHONPATH=/opt/pipeline/include",
        "AIRFLOW_HOME=/opt/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER=/opt/pipeline/dags",
        "AIRFLOW__CORE__PLUGINS_FOLDER=/opt/pipeline/plugins",
        "SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark",
        "JAVA_HOME=",
    ):
        assert expected in env_text, f"ENV lacks {expected}"
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "--no-install-recommends" in runs
    assert "useradd --uid 50000" in runs
    users = [args for op, args in instructions if op == "USER"]
    assert users, "no USER instruction: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, users
    assert ("WORKDIR", "/opt/pipeline") in instructions


def test_dockerignore_keeps_local_state_out_but_code_in() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", ".env", ".local"):
        assert required in patterns, f".dockerignore lacks {required}"
    for needed in ("dags", "plugins", "include", "requirements-lock.txt", "*", "**"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the build copies"
