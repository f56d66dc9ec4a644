"""Compare validation splits: what the validation figure promises against what unseen days give.

For the demo's first window (the 28 days ending 2013-01-28), each split is built by the real
dataset job (``build_dataset.py`` in a fresh process) and trained the way ``model_training``
trains (``train.search`` with the pipeline's seed and budget, then ``train.fit_final``):

* ``key_hash``: 20% of every day's flights validate (the split before issue 13);
* ``time``: the last 5 days validate (``dataset.validation_split: time``), no holdout;
* ``time + holdout 7``: the pipeline's default — 16 days train, 5 validate, the newest 7 are the
  ``recent`` split that judges the model in deployment (and are never trained on).

Each model is scored on its own validation split, on the golden set (20 000 rows of
2013-12-01..30, as the ``golden_dataset`` DAG samples it) and on the next 7 days' labels
(2013-01-29..02-04, every flight). Everything runs in a temporary directory (removed at the
end); MLflow is a local SQLite store. Run: ``.venv/bin/python bench/split_comparison.py``
(``--trials`` to change the search budget). Last line: JSON with every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (dt.date(2013, 1, 1), dt.date(2013, 1, 28))
NEXT_DAYS = (dt.date(2013, 1, 29), dt.date(2013, 2, 4))
GOLDEN = (dt.date(2013, 12, 1), dt.date(2013, 12, 30))
GOLDEN_ROWS = 20_000
SPLITS = (  # label, --validation-split, --holdout-days
    ("key_hash", "key_hash", 0),
    ("time", "time", 0),
    ("time + holdout 7", "time", 7),
)


def run_job(raw_root: Path, output: Path, start: dt.date, end: dt.date, *extra: str) -> dict[str, Any]:
    """The dataset job on ``start..end``; ``(job_stats, {split: frame})``."""
    import pandas as pd

    from mlpipeline.data.datasets import JOB_SCRIPT

    args = [
        sys.executable, str(JOB_SCRIPT), "--raw-root", str(raw_root), "--end-date", end.isoformat(),
        "--window-days", str((end - start).days + 1), "--output", str(output), "--master", "local[2]", *extra,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"build_dataset.py {start}..{end} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    stats = json.loads((output / "job_stats.json").read_text())
    frames = {
        split: pd.read_parquet(output / split, dtype_backend="numpy_nullable")
        for split in ("train", "validation", "recent")
        if (output / split).is_dir()
    }
    return {"stats": stats, "frames": frames}


def auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, score)), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=None, help="search budget (default: pipeline.yaml)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-split-"))
    for key in [k for k in os.environ if k.startswith("MLP_")]:
        del os.environ[key]
    os.environ.update({"MLP_STATE_DIR": str(base / "state"), "MLP_LAKE_URI": f"file://{base / 'lake'}"})
    try:
        figures = bench(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(figures, sort_keys=True))
    return 0


def bench(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    from mlpipeline.data import datasets
    from mlpipeline.data.landing import land_range
    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.training import train

    started = time.monotonic()
    cfg = get_pipeline_config()
    tcfg = cfg.training
    n_trials = args.trials or tcfg.n_trials
    lake = Lake.from_uri(f"file://{base / 'lake'}")
    for first, last in (WINDOW, (NEXT_DAYS[0], NEXT_DAYS[1]), GOLDEN):
        land_range(lake, first, last)
    raw = base / "lake" / "raw"
    print(f"landed the raw days in {time.monotonic() - started:.0f}s", flush=True)

    golden_build = run_job(raw, base / "golden", *GOLDEN)
    golden = datasets.sample_golden(
        pd.concat(list(golden_build["frames"].values()), ignore_index=True), GOLDEN_ROWS, cfg.dataset.seed
    )
    upcoming = pd.concat(list(run_job(raw, base / "next", *NEXT_DAYS)["frames"].values()), ignore_index=True)

    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
    mlflow.set_experiment("split-comparison")
    rows = []
    for label, split, holdout in SPLITS:
        built = run_job(
            raw, base / label.replace(" ", "_").replace("+", "plus"), *WINDOW,
            "--validation-split", split, "--validation-days", str(cfg.dataset.validation_days),
            "--validation-fraction", str(cfg.dataset.validation_fraction), "--holdout-days", str(holdout),
            "--seed", str(cfg.dataset.seed),
        )  # fmt: skip
        stats, frames = built["stats"], built["frames"]
        manifest = {"name": "split", "version": label, **stats, "label": "is_delayed"}
        data = train.prepare_data(manifest, frames)
        fit_started = time.monotonic()
        with mlflow.start_run(run_name=label):
            best = train.search(data, tcfg, n_trials=n_trials, timeout_s=tcfg.timeout_s)
        booster = train.fit_final(data, tcfg, best["params"])
        train_s = time.monotonic() - fit_started

        def score(frame, booster=booster, spec=data.spec):
            return train.predict(booster, spec.encode_frame(frame))

        plan = stats["split"]
        row = {
            "split": label,
            "train_days": f"{plan['train']['start']}..{plan['train']['end']}",
            "validation": (
                f"{plan['validation']['start']}..{plan['validation']['end']}"
                if plan["kind"] == "time"
                else f"{plan['validation_fraction']:.0%} of each day"
            ),
            "rows_train": len(frames["train"]),
            "rows_validation": len(frames["validation"]),
            "validation_auc": auc(data.y_valid, score(frames["validation"])),
            "golden_auc": auc(golden["is_delayed"].to_numpy(), score(golden)),
            "next_7_days_auc": auc(upcoming["is_delayed"].to_numpy(), score(upcoming)),
            "search_trials": best["n_trials"],
            "best_iteration": best["best_iteration"],
            "train_s": round(train_s, 1),
        }
        if "recent" in frames:
            row["recent_auc"] = auc(frames["recent"]["is_delayed"].to_numpy(), score(frames["recent"]))
        row["validation_minus_next_7"] = round(row["validation_auc"] - row["next_7_days_auc"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nSplit comparison, window {WINDOW[0]}..{WINDOW[1]}, seed {tcfg.seed}, {n_trials} trials:")
    print(f"{'split':<18} {'validation AUC':>14} {'golden AUC':>10} {'next 7 days AUC':>15} {'gap':>7}")
    for r in rows:
        print(
            f"{r['split']:<18} {r['validation_auc']:>14.4f} {r['golden_auc']:>10.4f} "
            f"{r['next_7_days_auc']:>15.4f} {r['validation_minus_next_7']:>+7.4f}"
        )
    load = os.getloadavg()
    return {
        "splits": rows,
        "golden_rows": len(golden),
        "next_7_days_rows": len(upcoming),
        "n_trials": n_trials,
        "seed": tcfg.seed,
        "total_s": round(time.monotonic() - started, 1),
        "loadavg": [round(x, 2) for x in load],
    }


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "include"))
    raise SystemExit(main())
