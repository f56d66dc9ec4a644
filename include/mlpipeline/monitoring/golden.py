"""Is the golden set still a fair judge? Its staleness as a daily monitored signal.

Each monitoring day compares the current golden set with the trailing week's traffic (the drift
window, every served version) using the drift machinery and thresholds of the daily check: the
golden set is **stale** when that comparison is dataset drift. The finding carries the figures,
the champion's gap between its golden-set and its delayed-label quality (added by ``decide``),
and the suggested action: the next golden version built from the newest labelled days that no
training window in use overlaps (:func:`refresh_range`) — a breach and an alarm. When those days
are (or overlap) the current golden set's, nothing fresher is allowed yet: the finding is a
``warn`` note, no alarm, and the deployment keeps guarding with ``golden_stale_tolerance``. With ``golden.refresh_on_stale``
``model_monitoring`` triggers ``golden_dataset`` with that range; the alarm itself never moves
production.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from mlpipeline.monitoring.checks import BREACH, OK, SKIPPED, UNAVAILABLE, Finding
from mlpipeline.monitoring.decide import WARN

if TYPE_CHECKING:
    import pandas as pd

    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import PipelineConfig

Window = tuple[dt.date, dt.date]


def staleness_config(cfg: PipelineConfig):
    """Monitoring's drift settings with ``golden.stale_threshold`` for the per-flight columns: a
    golden set from another month sits near monitoring's 0.1 on routes and planes by itself."""
    return cfg.monitoring.model_copy(update={"drift_threshold": cfg.golden.stale_threshold})


def refresh_range(
    day: dt.date, cfg: PipelineConfig, in_use: list[Window], data_start: dt.date
) -> Window | None:
    """The newest ``golden.refresh_days`` days before the dataset window of ``day`` that overlap
    no training window in use (champion, challenger); ``None`` when the data has none.

    Before the window of ``day``: that window (the retrain a drift starts) and every later one
    start after it, so no future training window can overlap the new golden set either.
    """
    size = cfg.golden.refresh_days
    end = day - dt.timedelta(days=cfg.dataset.window_days)  # the day before the window of ``day``
    while True:
        start = end - dt.timedelta(days=size - 1)
        if start < data_start:
            return None
        clash = [w for w in in_use if w[0] <= end and start <= w[1]]
        if not clash:
            return start, end
        end = min(w[0] for w in clash) - dt.timedelta(days=1)


def windows_in_use(client, model: str) -> list[Window]:
    """Data windows of the versions behind the ``champion`` and ``challenger`` aliases."""
    import mlflow

    from mlpipeline.training import tracking

    out = []
    for alias in ("champion", "challenger"):
        try:
            tags = client.get_model_version_by_alias(model, alias).tags
        except mlflow.exceptions.MlflowException:
            continue
        start, end = tags.get(tracking.TAG_WINDOW_START), tags.get(tracking.TAG_WINDOW_END)
        if start and end:
            out.append((dt.date.fromisoformat(start), dt.date.fromisoformat(end)))
    return out


def staleness_finding(
    lake: Lake,
    cfg: PipelineConfig,
    traffic: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    day: str,
    in_use: list[Window],
    data_start: dt.date,
) -> Finding:
    """The ``golden`` finding of day ``day``: the trailing week's traffic against the golden set
    (``in_use``: the training windows of the versions in use, :func:`windows_in_use`)."""
    from mlpipeline.data import datasets
    from mlpipeline.monitoring.drift import DriftInputError, check_drift

    info = datasets.current_golden(lake, cfg.golden.name)
    if info is None:
        return Finding("golden", SKIPPED, "no golden set to judge")
    try:
        _, golden = datasets.load_golden(lake, cfg.golden.name, info.version)
        result, _ = check_drift(
            traffic.drop(columns=["score"], errors="ignore"),
            golden,
            features,
            categorical,
            staleness_config(cfg),
        )
    except (datasets.DatasetError, DriftInputError) as err:
        return Finding("golden", UNAVAILABLE, f"golden set {info.version} not judged: {err}")
    figures: dict[str, Any] = {
        "golden_version": info.version,
        "golden_days": f"{info.start}..{info.end}",
        "golden_rows": len(golden),
        "traffic_rows": result.rows,
        "share": round(result.share, 4),
        "drifted": result.drifted,
        "columns": {c.column: round(c.score, 4) for c in result.judged if c.score is not None},
    }
    thresholds = {
        "drift_share_threshold": cfg.monitoring.drift_share_threshold,
        "stale_threshold": cfg.golden.stale_threshold,
        "columns": {c.column: c.threshold for c in result.judged},
    }
    if not result.dataset_drift:
        return Finding(
            "golden", OK, f"golden set {info.version} ({info.start}..{info.end}) still like the traffic "
            f"(drift share {result.share:.0%})", figures, thresholds,
        )  # fmt: skip
    refresh = refresh_range(dt.date.fromisoformat(day), cfg, in_use, data_start)
    summary = (
        f"golden set {info.version} ({info.start}..{info.end}) is stale: {', '.join(result.drifted)} drifted "
        f"against the last {cfg.monitoring.drift_window_days} days of traffic ({result.share:.0%} >= "
        f"{cfg.monitoring.drift_share_threshold:.0%})"
    )
    if refresh is None or (refresh[0] <= info.end and info.start <= refresh[1]):
        # Nothing fresher is allowed yet: the newest days outside the training windows in use are
        # (or overlap) the current golden set's. A note, not an alarm, until the windows move on.
        figures["suggested_action"] = (
            "none yet: it is the freshest golden set the training windows in use allow; model_deployment "
            "guards with golden_stale_tolerance"
        )
        return Finding(
            "golden", WARN, f"{summary}; kept: no fresher days outside the training windows in use",
            figures, thresholds, result.drifted,
        )  # fmt: skip
    figures["refresh"] = {"start": refresh[0].isoformat(), "end": refresh[1].isoformat()}
    how = "model_monitoring triggers it" if cfg.golden.refresh_on_stale else "trigger it from the UI"
    figures["suggested_action"] = (
        f"build the next golden version from {refresh[0]}..{refresh[1]} (golden_dataset; {how}); "
        "until then model_deployment guards with golden_stale_tolerance"
    )
    return Finding("golden", BREACH, summary, figures, thresholds, result.drifted)


def refresh_conf(finding: dict[str, Any] | None, cfg: PipelineConfig, day: str) -> dict[str, Any] | None:
    """``conf`` of the ``golden_dataset`` run a stale golden set triggers (``None``: no trigger)."""
    if not finding or finding.get("status") != BREACH or not cfg.golden.refresh_on_stale:
        return None
    refresh = (finding.get("figures") or {}).get("refresh")
    if not refresh:
        return None
    return {
        "start": refresh["start"],
        "end": refresh["end"],
        "sample_size": cfg.golden.default_sample_size,
        "version": None,  # the next free name
        "requested_by": "model_monitoring",
        "reason": f"{day}: {finding['summary']}",
    }
