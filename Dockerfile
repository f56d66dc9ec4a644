# Production image of the pipeline. One image serves every project role in
# docker-compose.yaml: the Airflow components (api-server, scheduler, dag-processor,
# triggerer), the MLflow tracking server, the model server and the Spark standalone
# master/worker (Spark runs from the pyspark package, SPARK_HOME = its directory).
# No HEALTHCHECK here: the right probe depends on the role, so each compose service
# declares its own.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

# Spark 4 needs Java 17. The arch-neutral symlink keeps JAVA_HOME valid on amd64 and arm64.
# (/usr/share/man/man1 must exist for the JRE's postinst on slim images.)
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

ENV JAVA_HOME=/usr/lib/jvm/java-17 \
    SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark

# Non-root runtime user (uid 50000, like the official Airflow image). The directories it
# writes to are created here so that named volumes mounted on them inherit its ownership.
RUN groupadd --gid 50000 airflow \
    && useradd --uid 50000 --gid 50000 --create-home --home-dir /home/airflow \
        --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/airflow/mlp-state /opt/pipeline \
    && chown -R airflow:airflow /opt/airflow

RUN pip install --no-cache-dir uv==0.13.9

# Dependencies first (only the lock file), so code changes do not invalidate this layer.
# apache-airflow-providers-apache-spark pulls pyspark-client, which writes into the same
# pyspark/ package directory as pyspark; reinstalling pyspark last makes its files win.
COPY requirements-lock.txt /tmp/requirements/requirements-lock.txt
RUN uv pip install --system -r /tmp/requirements/requirements-lock.txt \
    && uv pip install --system --reinstall --no-deps pyspark==4.3.0 \
    && python -c "import pyspark, sys; sys.exit(pyspark.__version__ != '4.3.0')" \
    && test -x "${SPARK_HOME}/bin/spark-class" \
    && rm -rf /tmp/requirements

COPY dags/ /opt/pipeline/dags/
COPY plugins/ /opt/pipeline/plugins/
COPY include/ /opt/pipeline/include/

ENV PATH="${SPARK_HOME}/bin:${PATH}" \
    OMP_WAIT_POLICY=PASSIVE \
    PYSPARK_PYTHON=python3 \
    PYTHONPATH=/opt/pipeline/include \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/pipeline/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/pipeline/plugins

WORKDIR /opt/pipeline

# api-server, model server, MLflow, Spark master RPC / master UI
EXPOSE 8080 8000 5000 7077 8081

# The airflow user, by number so that runAsNonRoot-style checks can verify it.
USER 50000:50000

CMD ["airflow", "version"]
