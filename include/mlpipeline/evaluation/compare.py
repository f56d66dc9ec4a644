"""Challenger vs champion on two sets, and the decision policy.

The sets: the frozen **golden set** (a regression guard) and the **recent set** (the newest
labelled days that neither model trained on: the challenger's dataset version holds them out,
``dataset.holdout_days``). On each:

* overall metrics of both, with a **paired bootstrap** of the primary metric's difference
  (the same resampled rows for both models; seeded; 95% percentile interval);
* the same metric per slice (``deployment.slices``, slices with at least ``slice_min_rows``);

plus calibration tables (golden) and engineering figures through the serving code path.
:func:`promotion_decision` reports every rule with its outcome; promote only when all pass (or
no champion). With at least ``deployment.recent_min_rows`` recent rows the recent set decides
(uplift and slices) and the golden set guards (``golden_tolerance``); with fewer, the golden set
alone decides, and the rules say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipeline.pipeline_config import DeploymentConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

LABEL = "is_delayed"


def metric(name: str, y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    if name == "roc_auc":
        return float(roc_auc_score(y, score))
    if name == "pr_auc":
        return float(average_precision_score(y, score))
    if name == "log_loss":
        return float(log_loss(y, score, labels=[0, 1]))
    if name == "brier":
        return float(brier_score_loss(y, score))
    raise ValueError(f"unknown metric {name!r}")


def _weighted_auc(y: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of ``counts`` (bootstrap multiplicities), ties counted half.

    Scores are grouped by distinct value once; each resample is then two matrix products.
    """
    import numpy as np
    from scipy import sparse

    values, group = np.unique(score, return_inverse=True)
    n, g = len(score), len(values)
    pos = sparse.csr_matrix((y.astype(np.float64), (np.arange(n), group)), shape=(n, g))
    neg = sparse.csr_matrix(((1 - y).astype(np.float64), (np.arange(n), group)), shape=(n, g))
    p = np.asarray(counts @ pos)  # resamples x groups: positives per distinct score
    q = np.asarray(counts @ neg)
    below = np.cumsum(q, axis=1) - q
    return (p * (below + 0.5 * q)).sum(axis=1) / (p.sum(axis=1) * q.sum(axis=1))


def _resample_counts(n: int, resamples: int, rng) -> np.ndarray:
    """Multiplicity of every row in each bootstrap resample (resamples x n)."""
    import numpy as np

    index = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(index.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def paired_bootstrap(
    name: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, resamples: int, seed: int
) -> dict[str, float]:
    """Difference challenger - champion of ``name``: point estimate and 95% percentile interval.

    Both models are scored on the same resampled rows (paired), so the interval reflects the
    difference, not the noise of each metric.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(y)
    y = np.asarray(y, dtype=np.int8)
    diffs = []
    chunk = max(1, 4_000_000 // n)
    for start in range(0, resamples, chunk):
        counts = _resample_counts(n, min(chunk, resamples - start), rng)
        if name == "roc_auc":
            diffs.append(_weighted_auc(y, challenger, counts) - _weighted_auc(y, champion, counts))
        elif name in ("log_loss", "brier"):
            if name == "log_loss":
                clip = 1e-7
                la = -(
                    y * np.log(np.clip(challenger, clip, 1))
                    + (1 - y) * np.log(np.clip(1 - challenger, clip, 1))
                )
                lb = -(
                    y * np.log(np.clip(champion, clip, 1)) + (1 - y) * np.log(np.clip(1 - champion, clip, 1))
                )
            else:
                la, lb = (challenger - y) ** 2, (champion - y) ** 2
            diffs.append((counts @ (la - lb)) / n)
        else:
            rows = []
            for weights in counts:
                index = np.repeat(np.arange(n), weights.astype(np.int64))
                rows.append(
                    metric(name, y[index], challenger[index]) - metric(name, y[index], champion[index])
                )
            diffs.append(np.asarray(rows))
    all_diffs = np.concatenate(diffs)
    low, high = np.percentile(all_diffs, [2.5, 97.5])
    return {
        "metric": name,
        "difference": metric(name, y, challenger) - metric(name, y, champion),
        "ci_low": float(low),
        "ci_high": float(high),
        "resamples": resamples,
        "seed": seed,
    }


def slice_table(
    frame: pd.DataFrame, name: str, challenger: np.ndarray, champion: np.ndarray | None, cfg: DeploymentConfig
) -> list[dict[str, Any]]:
    import numpy as np

    y = frame[LABEL].to_numpy(dtype=np.int8)
    rows = []
    for column in cfg.slices:
        if column not in frame.columns:
            continue
        values = frame[column].astype("string").fillna("<null>").to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            count = int(mask.sum())
            if count < cfg.slice_min_rows or len(np.unique(y[mask])) < 2:
                continue
            entry = {
                "slice": column,
                "value": str(value),
                "rows": count,
                "challenger": metric(name, y[mask], challenger[mask]),
            }
            if champion is not None:
                entry["champion"] = metric(name, y[mask], champion[mask])
                gain = entry["challenger"] - entry["champion"]
                entry["change"] = gain if cfg.higher_is_better else -gain
            rows.append(entry)
    return rows


@dataclass
class Evaluation:
    primary_metric: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    bootstrap: dict[str, Any] | None
    slices: list[dict[str, Any]]
    calibration: dict[str, list[dict]]
    engineering: dict[str, Any]
    golden: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    recent: dict[str, Any] | None = None  # :func:`evaluate_recent`: the recent set, or why there is none

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def evaluate(
    golden: pd.DataFrame,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    engineering: dict[str, Any],
    cfg: DeploymentConfig,
    golden_info: dict[str, Any],
) -> Evaluation:
    import numpy as np

    from mlpipeline.training.metrics import calibration_table, classification_metrics

    y = golden[LABEL].to_numpy(dtype=np.int8)
    boot = None
    if champion_scores is not None:
        boot = paired_bootstrap(
            cfg.primary_metric,
            y,
            challenger_scores,
            champion_scores,
            cfg.bootstrap_resamples,
            cfg.bootstrap_seed,
        )
    calibration = {"challenger": calibration_table(y, challenger_scores)}
    if champion_scores is not None:
        calibration["champion"] = calibration_table(y, champion_scores)
    return Evaluation(
        primary_metric=cfg.primary_metric,
        challenger=classification_metrics(y, challenger_scores),
        champion=classification_metrics(y, champion_scores) if champion_scores is not None else None,
        bootstrap=boot,
        slices=slice_table(golden, cfg.primary_metric, challenger_scores, champion_scores, cfg),
        calibration=calibration,
        engineering=engineering,
        golden=golden_info,
    )


@dataclass
class RecentSet:
    """The recent labelled rows both models are judged on (``info``: source, days, hashes, exclusions)."""

    frame: pd.DataFrame | None
    challenger_scores: np.ndarray | None
    champion_scores: np.ndarray | None
    info: dict[str, Any]


def evaluate_recent(recent: RecentSet, cfg: DeploymentConfig) -> dict[str, Any]:
    """Overall metrics, paired bootstrap and slices on the recent set (``info`` only when empty)."""
    import numpy as np

    from mlpipeline.training.metrics import classification_metrics

    out: dict[str, Any] = {"info": recent.info, "rows": 0}
    frame = recent.frame
    if frame is None or len(frame) == 0:
        return out
    y = frame[LABEL].to_numpy(dtype=np.int8)
    out["rows"] = len(frame)
    if len(np.unique(y)) < 2:
        out["info"] = {**recent.info, "note": "one label class only: not judged"}
        return out
    out["challenger"] = classification_metrics(y, recent.challenger_scores)
    if recent.champion_scores is not None:
        out["champion"] = classification_metrics(y, recent.champion_scores)
        out["bootstrap"] = paired_bootstrap(
            cfg.primary_metric,
            y,
            recent.challenger_scores,
            recent.champion_scores,
            cfg.bootstrap_resamples,
            cfg.bootstrap_seed,
        )
    out["slices"] = slice_table(
        frame, cfg.primary_metric, recent.challenger_scores, recent.champion_scores, cfg
    )
    return out


def _uplift_rule(boot: dict[str, Any], cfg: DeploymentConfig, where: str) -> tuple[bool, str]:
    low, high = boot.get("ci_low", float("nan")), boot.get("ci_high", float("nan"))
    if cfg.higher_is_better:
        passed, bound = low > cfg.min_uplift, low
    else:  # lower is better: the whole interval must be below -margin
        passed, bound = high < -cfg.min_uplift, -high
    return passed, (
        f"{where}: {cfg.primary_metric} challenger - champion = {boot.get('difference', float('nan')):+.4f}, "
        f"95% CI [{low:+.4f}, {high:+.4f}]; uplift lower bound {bound:+.4f} vs margin {cfg.min_uplift}"
    )


def _slice_rule(slices: list[dict[str, Any]], cfg: DeploymentConfig, where: str) -> tuple[bool, str]:
    worst = [s for s in slices if s.get("change", 0) < -cfg.slice_tolerance]
    if not worst:
        return True, f"{where}: no slice regresses beyond tolerance {cfg.slice_tolerance}"
    return False, (
        f"{where}: "
        + "; ".join(f"{s['slice']}={s['value']} {s['change']:+.4f} ({s['rows']} rows)" for s in worst)
        + f" (tolerance {cfg.slice_tolerance})"
    )


def recent_decides(evaluation: Evaluation, cfg: DeploymentConfig) -> bool:
    recent = evaluation.recent or {}
    return recent.get("rows", 0) >= cfg.recent_min_rows and "bootstrap" in recent


def promotion_decision(
    evaluation: Evaluation,
    cfg: DeploymentConfig,
    challenger_window_end: str | None,
    champion_window_end: str | None,
    has_champion: bool,
) -> dict[str, Any]:
    """Apply the policy; every rule is reported with its outcome and the figures behind it."""
    rules: list[dict[str, Any]] = []

    def rule(name: str, passed: bool, detail: str) -> None:
        rules.append({"rule": name, "passed": bool(passed), "detail": detail})

    eng = evaluation.engineering
    rule(
        "loads_and_scores",
        eng.get("batch_rows", 0) > 0,
        f"scored {eng.get('batch_rows', 0)} golden rows through the serving code path",
    )
    # The CPU time per request is judged (engineering.measure: load on the machine inflates wall
    # time, not CPU time); a report without it (older versions) is judged on wall time.
    judged = eng.get("single_row_cpu_p99_ms", eng.get("single_row_p99_ms", float("inf")))
    rule(
        "latency_budget",
        judged <= cfg.max_p99_latency_ms,
        f"single-row p99 {judged:.3f} ms of CPU, {eng.get('single_row_p99_ms', float('nan')):.3f} ms wall "
        f"(budget {cfg.max_p99_latency_ms} ms of CPU)",
    )
    rule(
        "memory_budget",
        eng.get("model_bytes", float("inf")) <= cfg.max_model_bytes,
        f"model {eng.get('model_bytes', 0):,} bytes (budget {cfg.max_model_bytes:,})",
    )
    if has_champion:
        golden_name = (
            f"golden set {evaluation.golden.get('version', '?')} ({evaluation.golden.get('rows', 0)} rows)"
        )
        if recent_decides(evaluation, cfg):
            recent = evaluation.recent or {}
            info = recent.get("info") or {}
            where = f"recent set {info.get('start')}..{info.get('end')} ({recent['rows']} rows)"
            rule("recent_set", True, f"{where} decides; the golden set guards")
            rule("uplift", *_uplift_rule(recent["bootstrap"], cfg, where))
            rule("slices", *_slice_rule(recent.get("slices") or [], cfg, where))
            boot = evaluation.bootstrap or {}
            change = boot.get("difference", float("nan"))
            change = change if cfg.higher_is_better else -change
            stale = evaluation.golden.get("staleness") or {}
            tolerance = cfg.golden_stale_tolerance if stale.get("stale") else cfg.golden_tolerance
            why = (
                f" (golden set stale: {', '.join(stale.get('drifted') or [])} drifted against the recent set)"
                if stale.get("stale")
                else ""
            )
            rule(
                "golden_guard",
                change >= -tolerance,
                f"{golden_name}: {cfg.primary_metric} change {change:+.4f} (better is positive) vs tolerance "
                f"-{tolerance}{why}",
            )
        else:
            recent = evaluation.recent or {}
            why = (recent.get("info") or {}).get("note") or "no recent set"
            rule(
                "recent_set",
                True,
                f"{recent.get('rows', 0)} recent labelled rows (< {cfg.recent_min_rows}): the golden set alone "
                f"decides ({why})",
            )
            rule("uplift", *_uplift_rule(evaluation.bootstrap or {}, cfg, golden_name))
            rule("slices", *_slice_rule(evaluation.slices, cfg, golden_name))
        fresher = challenger_window_end is not None and champion_window_end is not None
        rule(
            "data_not_older",
            fresher and challenger_window_end >= champion_window_end,
            f"challenger data ends {challenger_window_end}, champion's {champion_window_end}",
        )
    else:
        rule(
            "bootstrap", True, "no champion yet: the first model that loads and fits the budgets is promoted"
        )
    decision = "promote" if all(r["passed"] for r in rules) else "reject"
    reasons = [f"{r['rule']}: {r['detail']}" for r in rules if not r["passed"]]
    return {"decision": decision, "rules": rules, "reasons": reasons}
