"""Quality on delayed labels, engineering health and consistency: data in, findings out.

Every check returns a :class:`Finding`: ``ok``, ``breach`` (a figure beyond its threshold),
``skipped`` (nothing to judge, with the reason) or ``unavailable`` (the source could not be
read, e.g. the server is down). Figures and thresholds travel with the finding, so an alarm
or a record can quote them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipeline.pipeline_config import MonitoringConfig

if TYPE_CHECKING:
    import pandas as pd

OK, BREACH, SKIPPED, UNAVAILABLE = "ok", "breach", "skipped", "unavailable"
PREDICTION_LOG_COLUMNS = ("model_version", "score", "latency_ms", "flight_key")


@dataclass
class Finding:
    check: str  # drift | quality | engineering | consistency | traffic | golden
    status: str
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_columns(frame: pd.DataFrame, columns) -> list[str]:
    return [c for c in columns if c not in frame.columns]


def dominant_version(log: pd.DataFrame) -> str | None:
    """The model version that served most of the logged rows."""
    if log.empty or "model_version" not in log.columns:
        return None
    counts = log["model_version"].astype(str).value_counts()
    return str(counts.index[0]) if len(counts) else None


# --------------------------------------------------------------------------------------
# Quality on delayed labels
# --------------------------------------------------------------------------------------
def quality_on_labels(
    log: pd.DataFrame,
    labels: pd.DataFrame | None,
    golden_metrics: dict[str, dict[str, float]],
    cfg: MonitoringConfig,
    labels_day: str,
    replaced: dict[str, str] | None = None,
) -> Finding:
    """Served scores of ``labels_day`` vs the true outcomes, per served version, vs its golden figures.

    ``golden_metrics`` maps a version to its golden-set metrics (roc_auc, log_loss). The
    finding is about the version that served most of that day's rows. ``replaced`` maps a
    version to the champion it replaced: a fresh deployment is also held to the golden
    figures of the model it replaced (a worse model may match its own poor golden figures).
    """
    from mlpipeline.training.metrics import classification_metrics

    if labels is None:
        return Finding("quality", SKIPPED, f"labels of {labels_day} have not landed: quality not judged yet")
    if log.empty:
        return Finding("quality", SKIPPED, f"no predictions were logged on {labels_day}: nothing to judge")
    missing = missing_columns(log, ("flight_key", "score", "model_version"))
    if missing:
        return Finding(
            "quality", UNAVAILABLE, f"prediction log of {labels_day} lacks column(s) {', '.join(missing)}"
        )
    # One prediction and one label per flight: a replayed day logs a key twice (the newest
    # prediction counts), a re-landed label file may repeat one; both are counted, never joined twice.
    ordered = log.sort_values("ts", kind="mergesort") if "ts" in log else log
    latest = ordered.drop_duplicates("flight_key", keep="last")
    unique_labels = labels[["flight_key", "is_delayed"]].drop_duplicates("flight_key", keep="last")
    joined = latest.drop(columns=["is_delayed"], errors="ignore").merge(
        unique_labels, on="flight_key", how="inner"
    )
    joined = joined[joined["is_delayed"].notna()]
    version = dominant_version(joined)
    served = joined[joined["model_version"].astype(str) == version] if version else joined
    figures: dict[str, Any] = {
        "labels_day": labels_day,
        "logged_rows": len(latest),
        "labelled_rows": len(served),
        "duplicate_predictions": len(log) - len(latest),
        "duplicate_labels": len(labels) - len(unique_labels),
        "labels_without_prediction": int((~unique_labels["flight_key"].isin(latest["flight_key"])).sum()),
    }
    if len(served) < cfg.min_labelled_rows:
        return Finding(
            "quality",
            SKIPPED,
            f"{len(served)} labelled predictions on {labels_day} (< {cfg.min_labelled_rows}): not judged",
            figures,
            version=version,
        )
    metrics = classification_metrics(served["is_delayed"].astype(int).to_numpy(), served["score"].to_numpy())
    figures.update(
        {k: metrics[k] for k in ("roc_auc", "log_loss", "brier", "ece", "base_rate", "mean_score")}
    )
    thresholds = {
        "max_roc_auc_drop": cfg.max_roc_auc_drop,
        "max_log_loss_increase": cfg.max_log_loss_increase,
        "max_calibration_error": cfg.max_calibration_error,
    }
    breaches = []
    y = served["is_delayed"].astype(int)
    se = auc_standard_error(metrics["roc_auc"], int(y.sum()), int((1 - y).sum()))
    upper = metrics["roc_auc"] + 1.96 * se
    figures.update({"roc_auc_se": se, "roc_auc_ci_high": upper})
    baselines = [("its", str(version))]
    if replaced and replaced.get(str(version)):
        baselines.append(("the replaced champion's", str(replaced[str(version)])))
    for whose, baseline in baselines:
        golden = golden_metrics.get(baseline) or {}
        if not golden:
            figures[f"golden_v{baseline}"] = "no golden-set figures for this version"
            continue
        figures[f"golden_v{baseline}_roc_auc"] = golden.get("roc_auc")
        figures[f"golden_v{baseline}_log_loss"] = golden.get("log_loss")
        if golden.get("roc_auc") is not None and math.isfinite(metrics["roc_auc"]):
            drop = golden["roc_auc"] - metrics["roc_auc"]
            figures[f"roc_auc_drop_vs_v{baseline}"] = drop
            # A day is ~900 flights: its AUC has a standard error of ~0.02. Breach only when the
            # whole 95% interval lies more than the tolerance below the golden figure.
            if upper < golden["roc_auc"] - cfg.max_roc_auc_drop:
                breaches.append(
                    f"ROC AUC {metrics['roc_auc']:.3f} (95% CI up to {upper:.3f}) is {drop:.3f} below {whose} "
                    f"golden-set {golden['roc_auc']:.3f} (v{baseline}; tolerance {cfg.max_roc_auc_drop})"
                )
        if golden.get("log_loss") is not None:
            increase = metrics["log_loss"] - golden["log_loss"]
            figures[f"log_loss_increase_vs_v{baseline}"] = increase
            if increase > cfg.max_log_loss_increase:
                breaches.append(
                    f"log loss {metrics['log_loss']:.3f} is {increase:.3f} above {whose} golden-set "
                    f"{golden['log_loss']:.3f} (v{baseline}; tolerance {cfg.max_log_loss_increase})"
                )
    if metrics["ece"] > cfg.max_calibration_error:
        breaches.append(f"calibration error {metrics['ece']:.3f} above {cfg.max_calibration_error}")
    status = BREACH if breaches else OK
    summary = (
        "; ".join(breaches)
        if breaches
        else f"v{version} on {labels_day}: ROC AUC {metrics['roc_auc']:.3f}, log loss {metrics['log_loss']:.3f}"
    )
    return Finding("quality", status, summary, figures, thresholds, breaches, version)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of a ROC AUC."""
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


# --------------------------------------------------------------------------------------
# Engineering health
# --------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match:
            try:
                out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
            except ValueError:
                continue
    return out


def scrape_server(url: str, timeout_s: float) -> dict[str, Any]:
    """``/health`` and ``/metrics`` of the model server; ``{"error": …}`` when it is unreachable."""
    import httpx

    try:
        health = httpx.get(f"{url}/health", timeout=timeout_s)
        metrics = httpx.get(f"{url}/metrics", timeout=timeout_s)
        health.raise_for_status()
        metrics.raise_for_status()
        return {"health": health.json(), "metrics": parse_prometheus(metrics.text)}
    except (httpx.HTTPError, ValueError) as err:
        return {"error": f"model server {url} unreachable: {type(err).__name__}: {err}"}


def engineering_health(log: pd.DataFrame, server: dict[str, Any], cfg: MonitoringConfig, day: str) -> Finding:
    """Latency percentiles of the day's predictions; error rate and memory from the server."""
    import numpy as np

    thresholds = {
        "max_p99_latency_ms": cfg.max_p99_latency_ms,
        "max_error_rate": cfg.max_error_rate,
        "max_memory_mb": cfg.max_memory_mb,
    }
    figures: dict[str, Any] = {"day": day}
    breaches: list[str] = []
    if not log.empty and "latency_ms" in log.columns:
        latency = pd_numeric(log["latency_ms"])
        latency = latency[np.isfinite(latency)]
        if len(latency):
            p50, p95, p99 = np.percentile(latency, [50, 95, 99])
            figures.update({"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)})
            if p99 > cfg.max_p99_latency_ms:
                breaches.append(f"p99 latency {p99:.1f} ms above {cfg.max_p99_latency_ms} ms on {day}")
    else:
        figures["latency"] = "no latency_ms in the prediction log"
    if "error" in server:
        figures["server"] = server["error"]
        breaches.append(server["error"])
    else:
        metrics = server["metrics"]
        requests = {k: v for k, v in metrics.items() if k.startswith("mlp_requests_total")}
        total = sum(requests.values())
        errors = sum(v for k, v in requests.items() if 'status="200"' not in k)
        figures["requests_total"] = total
        figures["error_rate"] = errors / total if total else 0.0
        figures["memory_mb"] = metrics.get("process_resident_memory_bytes", float("nan")) / 2**20
        figures["prediction_log_lost_rows"] = metrics.get("mlp_prediction_log_lost_rows", 0.0)
        if figures["error_rate"] > cfg.max_error_rate:
            breaches.append(
                f"error rate {figures['error_rate']:.3%} above {cfg.max_error_rate:.1%} ({errors:.0f} of {total:.0f})"
            )
        if figures["memory_mb"] > cfg.max_memory_mb:
            breaches.append(f"server memory {figures['memory_mb']:.0f} MB above {cfg.max_memory_mb:.0f} MB")
        if figures["prediction_log_lost_rows"] > 0:
            breaches.append(f"the prediction log lost {figures['prediction_log_lost_rows']:.0f} rows")
    version = dominant_version(log)
    if breaches:
        status = UNAVAILABLE if breaches == [server.get("error")] else BREACH
        return Finding("engineering", status, "; ".join(breaches), figures, thresholds, breaches, version)
    p99 = figures.get("p99_ms")
    summary = f"p99 {p99:.1f} ms" if p99 is not None else "no latency figures"
    summary += f", error rate {figures['error_rate']:.2%}, memory {figures['memory_mb']:.0f} MB"
    return Finding("engineering", OK, summary, figures, thresholds, [], version)


def pd_numeric(series):
    import numpy as np
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


# --------------------------------------------------------------------------------------
# Consistency
# --------------------------------------------------------------------------------------
def consistency(server: dict[str, Any], champion: str | None) -> Finding:
    """The version the server reports is the registry's champion."""
    if "error" in server:
        return Finding("consistency", UNAVAILABLE, server["error"], {"champion": champion})
    served = server["health"].get("version")
    figures = {"served_version": served, "champion": champion}
    if champion is None:
        return Finding("consistency", SKIPPED, "no champion in the registry yet", figures)
    if str(served) != str(champion):
        return Finding(
            "consistency",
            BREACH,
            f"the server serves v{served} but the registry's champion is v{champion}",
            figures,
            breaches=[f"served v{served} != champion v{champion}"],
            version=str(served),
        )
    return Finding("consistency", OK, f"server serves the champion v{champion}", figures, version=str(served))
