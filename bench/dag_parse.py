"""Parse every DAG file in a fresh interpreter and print the time each takes.

Each file is parsed in its own new Python process, set up as the dag-processor sets up the
process it parses a file in: Airflow 3's dag-processor ``os.fork()``s each file's parser
(``airflow.sdk.execution_time.supervisor.WatchedSubprocess.start``) from a process that has
``airflow.dag_processing.processor`` (models, SQLAlchemy, serialization) loaded, so the probe
imports that first. The figure is the time to execute the DAG file and build its DAG objects
(its own imports included), i.e. what every parse loop pays per file. Last line: a JSON object
with ``max_file_s`` and ``total_s`` (targets: every file < 0.3 s, the folder < 1 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3

PROBE = r"""
import json, sys, time
import airflow.sdk  # loaded by the dag-processor before it parses files
import airflow.dag_processing.processor  # ditto: each file's parser is a fork of that process
import gc
gc.freeze()  # as the dag-processor does before it forks parsers (DagFileProcessorManager.before_run)
sys.path.insert(0, sys.argv[2])  # the plugins folder, on sys.path in Airflow
start = time.perf_counter()
import runpy
runpy.run_path(sys.argv[1], run_name="__dag_file__")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def parse_seconds(path: Path) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        result = subprocess.run(
            [sys.executable, "-c", PROBE, str(path), str(ROOT / "plugins")],
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
    return best


def main() -> None:
    files = sorted((ROOT / "dags").glob("*.py"))
    timings = {}
    for path in files:
        timings[path.name] = parse_seconds(path)
        print(f"{path.name:<32} {timings[path.name]:.3f} s")
    summary = {
        "files": len(files),
        "max_file_s": round(max(timings.values()), 4),
        "total_s": round(sum(timings.values()), 4),
        "per_file_s": {k: round(v, 4) for k, v in timings.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
