"""Fixtures of the end-to-end tests of the dataset DAGs."""

from __future__ import annotations

import shutil

import pytest
from dataset_helpers import GOLDEN_DAYS, TRAIN_DAYS, write_test_config

from mlpipeline.data.landing import land_range
from mlpipeline.lake import Lake


@pytest.fixture(scope="session")
def landed_lake(tmp_path_factory) -> str:
    """A lake with the real raw days the tests build from (each test works on a copy)."""
    root = tmp_path_factory.mktemp("raw-lake")
    lake = Lake.from_uri(f"file://{root}")
    land_range(lake, *TRAIN_DAYS)
    land_range(lake, *GOLDEN_DAYS)
    return str(root)


@pytest.fixture(autouse=True, scope="session")
def _warm_spark(spark_connect_server) -> str:
    """Dataset builds in these tests go to one warm Spark Connect server (as in the stack)."""
    return spark_connect_server


@pytest.fixture
def env(landed_lake, tmp_path, settings_env, airflow_db) -> Lake:
    """Settings for one test: its own copy of the landed lake and the 3-day test config."""
    lake_root = tmp_path / "lake"
    shutil.copytree(landed_lake, lake_root)
    config = write_test_config(tmp_path / "pipeline.yaml")
    settings = settings_env(
        lake_uri=f"file://{lake_root}", pipeline_config=str(config), state_dir=str(tmp_path / "state")
    )
    return Lake.from_settings(settings)
