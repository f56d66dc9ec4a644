"""Engineering check through the server's own code path: load, score a batch, single-row latency, memory.

The deployment gate calls :func:`measure` on a candidate so that it tests exactly what
production runs: :func:`mlpipeline.serving.model.load_model_dir` to load, the server's request
encoder (:func:`mlpipeline.serving.app._encode`) and the booster on a numpy array to score.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EngineeringReport:
    load_seconds: float
    batch_rows: int
    batch_seconds: float
    single_row_p50_ms: float
    single_row_p99_ms: float
    single_row_cpu_p99_ms: float
    model_bytes: int
    rss_growth_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(model_dir: str | Path, rows: list[dict[str, Any]], repeats: int = 2000) -> EngineeringReport:
    """Load the model directory like the server does and time it on request rows."""
    import numpy as np

    from mlpipeline.serving.app import _encode
    from mlpipeline.serving.model import load_model_dir

    if not rows:
        raise ValueError("the engineering check needs at least one request row")
    rss_before = _rss_bytes()
    started = time.perf_counter()
    model = load_model_dir(model_dir)
    load_seconds = time.perf_counter() - started
    rss_after = _rss_bytes()

    started = time.perf_counter()
    scores = model.score_matrix(_encode(model, rows))
    batch_seconds = time.perf_counter() - started
    if len(scores) != len(rows) or not np.all(np.isfinite(scores)):
        raise ValueError("the model returned missing or non-finite scores on the batch")

    # Wall time, three rounds, the quietest one counts; and the process's CPU time per request,
    # which the budget judges: a noisy neighbour on a shared 2-core machine takes the CPU away
    # (wall p99 18 ms seen at load 10 for a 1 ms model) but adds no CPU time, while a slow
    # model costs CPU in every round.
    best: np.ndarray | None = None
    cpu = np.empty(repeats * 3)
    for round_ in range(3):
        timings = np.empty(repeats)
        for i in range(repeats):
            row = rows[i % len(rows)]
            t0, c0 = time.perf_counter(), time.process_time()
            model.score_matrix(_encode(model, [row]))
            timings[i] = time.perf_counter() - t0
            cpu[round_ * repeats + i] = time.process_time() - c0
        if best is None or np.percentile(timings, 99) < np.percentile(best, 99):
            best = timings
    timings = best
    return EngineeringReport(
        load_seconds=load_seconds,
        batch_rows=len(rows),
        batch_seconds=batch_seconds,
        single_row_p50_ms=float(np.percentile(timings, 50) * 1000),
        single_row_p99_ms=float(np.percentile(timings, 99) * 1000),
        single_row_cpu_p99_ms=float(np.percentile(cpu, 99) * 1000),
        model_bytes=len(model.booster.save_raw("ubj")),
        rss_growth_bytes=max(0, rss_after - rss_before),
    )
