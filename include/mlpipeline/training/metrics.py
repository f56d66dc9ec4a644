"""Classification metrics shared by training, evaluation and monitoring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_BINS = 10


def calibration_table(y_true: np.ndarray, y_score: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Reliability table: per score bin, mean predicted vs observed rate and count."""
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(y_score, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        table.append(
            {
                "bin": b,
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "mean_score": float(y_score[mask].mean()) if count else None,
                "observed_rate": float(y_true[mask].mean()) if count else None,
            }
        )
    return table


def expected_calibration_error(table: list[dict]) -> float:
    total = sum(row["count"] for row in table)
    if not total:
        return float("nan")
    return float(
        sum(row["count"] * abs(row["mean_score"] - row["observed_rate"]) for row in table if row["count"])
        / total
    )


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, Any]:
    """ROC AUC, PR AUC, log loss, Brier score, expected calibration error, base rate."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int8)
    y_score = np.clip(np.asarray(y_score, dtype=np.float64), 1e-7, 1 - 1e-7)
    two_classes = len(np.unique(y_true)) == 2
    table = calibration_table(y_true, y_score)
    return {
        "roc_auc": float(roc_auc_score(y_true, y_score)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y_true, y_score)) if two_classes else float("nan"),
        "log_loss": float(log_loss(y_true, y_score, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, y_score)),
        "ece": expected_calibration_error(table),
        "base_rate": float(y_true.mean()),
        "mean_score": float(y_score.mean()),
        "rows": len(y_true),
    }


def calibration_png(tables: dict[str, list[dict]], title: str, dpi: int = 110) -> bytes:
    """One reliability diagram (PNG) with a curve per calibration table, against the diagonal."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for name, table in tables.items():
        rows = [r for r in table if r["count"]]
        ax.plot([r["mean_score"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label=name)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed delay rate")
    ax.set_title(title)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
