"""A real published dataset and golden set for the training tests (built once per session)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mlpipeline.data import steps as data_steps
from mlpipeline.data.landing import land_range
from mlpipeline.lake import Lake

TRAIN_VERSION = dt.date(2013, 1, 10)
TRAIN_WINDOW = (dt.date(2013, 1, 1), dt.date(2013, 1, 10))
GOLDEN_WINDOW = (dt.date(2013, 1, 20), dt.date(2013, 1, 22))


def build_lake(root: Path, settings, cfg, *, spark_remote: str) -> Lake:
    """Land real days and build one training version and one golden set through the real job
    (on the session's Spark Connect server, ``spark_remote``)."""
    import os
    import subprocess
    import sys

    from mlpipeline.data.datasets import JOB_SCRIPT

    lake = Lake.from_uri(f"file://{root}")
    land_range(lake, *TRAIN_WINDOW)
    land_range(lake, *GOLDEN_WINDOW)
    for kind, name, version, window in (
        ("golden", cfg.golden.name, "v1", GOLDEN_WINDOW),
        ("training", cfg.dataset.name, TRAIN_VERSION.isoformat(), TRAIN_WINDOW),
    ):
        plan = data_steps.prepare(kind, name, version, *window, lake=lake, settings=settings, cfg=cfg)
        result = subprocess.run(
            [sys.executable, str(JOB_SCRIPT), *plan.job_args()],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "SPARK_REMOTE": spark_remote},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        quality = data_steps.gate(plan, lake=lake, cfg=cfg)
        if kind == "golden":
            data_steps.publish_golden(plan, quality, sample_size=2000, lake=lake)
        else:
            data_steps.publish_training(plan, quality, lake=lake, cfg=cfg)
    return lake
