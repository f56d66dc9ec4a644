-- Run once by the postgres image's entrypoint on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yaml).
-- POSTGRES_DB is "postgres" there, so neither database exists yet; both belong to the
-- POSTGRES_USER role (airflow) that Airflow and MLflow connect as.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
