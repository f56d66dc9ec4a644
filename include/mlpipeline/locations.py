"""Every lake location, named once (paths relative to the lake root, ``MLP_LAKE_URI``).

Every other module asks this one; ``tests/unit/test_locations.py`` checks the README's lake
tree against :data:`TREE`. Days are ISO dates (``YYYY-MM-DD``); a ``str`` day is taken as
already formatted.

Pure string functions: no I/O, no heavy imports (DAG files import it at parse time).
"""

from __future__ import annotations

import datetime as dt

RAW = "raw"
DATASETS = "datasets"
GOLDEN = "golden"
QUARANTINE = "quarantine"
REPORTS = "reports"
PREDICTIONS = "serving/predictions"
LABELS = "serving/labels"
SERVING_MODELS = "serving/models"
MONITORING = "monitoring"
DEPLOYMENTS = "deployments"
REFERENCES = "references"
TRAINING = "training"

#: The lake's layout, one line per location: (pattern, what it holds). The README's tree
#: under "The lake" lists the same patterns (checked by a test).
TREE: tuple[tuple[str, str], ...] = (
    ("raw/<table>/dt=YYYY-MM-DD/", "landed raw partition (commit marker _SUCCESS)"),
    ("raw/_profiles/dt=YYYY-MM-DD/<hash>.json", "profile of a raw day (history checks of the gate)"),
    (
        "datasets/<name>/ds=YYYY-MM-DD/",
        "published training dataset (train/, validation/, recent/, manifest.json)",
    ),
    ("golden/<name>/<version>/", "frozen golden set (manifest with content hash)"),
    ("quarantine/<name>/ds=YYYY-MM-DD/", "data that failed the quality gate"),
    ("reports/quality/<name>/<version>/", "quality gate summary.md + validation.json"),
    ("reports/evaluation/<model>/v<N>/", "evaluation report.html + report.json"),
    ("reports/drift/<model>/dt=YYYY-MM-DD/", "drift report"),
    ("serving/predictions/dt=YYYY-MM-DD/", "every prediction the server logged"),
    ("serving/labels/dt=YYYY-MM-DD/", "delayed ground truth"),
    ("serving/models/<model>/", "exported versions v<N>/ and the CURRENT pointer"),
    ("monitoring/<model>/dt=YYYY-MM-DD/record.json", "one monitoring run's record"),
    ("deployments/<model>/history.jsonl", "audit trail of every champion move"),
    ("references/<model>/run=<run_id>/reference.parquet", "training sample that drift is judged against"),
    ("training/<model>/ds=YYYY-MM-DD/ledger.json", "what became of a dataset version: trained or superseded"),
)


def _day(day: dt.date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


# raw landing ------------------------------------------------------------------------------
def raw_partition(table: str, day: dt.date | str) -> str:
    """Lake directory of ``table``'s partition for ``day``."""
    return f"{RAW}/{table}/dt={_day(day)}"


def raw_profile(day: dt.date | str, content_hash: str) -> str:
    """Profile of the raw day ``day`` whose partitions hash to ``content_hash`` (history checks)."""
    return f"{RAW}/_profiles/dt={_day(day)}/{content_hash}.json"


# datasets ---------------------------------------------------------------------------------
def datasets_root(name: str) -> str:
    return f"{DATASETS}/{name}"


def dataset_dir(name: str, day: dt.date | str) -> str:
    return f"{DATASETS}/{name}/ds={_day(day)}"


def golden_root(name: str) -> str:
    return f"{GOLDEN}/{name}"


def golden_dir(name: str, version: str) -> str:
    return f"{golden_root(name)}/{version}"


def quarantine_dir(name: str, day: dt.date | str) -> str:
    return f"{QUARANTINE}/{name}/ds={_day(day)}"


# reports ----------------------------------------------------------------------------------
def quality_report_dir(name: str, version: str) -> str:
    return f"{REPORTS}/quality/{name}/{version}"


def evaluation_report_dir(model: str, version: str | int) -> str:
    return f"{REPORTS}/evaluation/{model}/v{version}"


def evaluation_report_json(model: str, version: str | int) -> str:
    return f"{evaluation_report_dir(model, version)}/report.json"


def drift_report_dir(model: str, day: dt.date | str) -> str:
    return f"{REPORTS}/drift/{model}/dt={_day(day)}"


# serving ----------------------------------------------------------------------------------
def predictions_dir(day: dt.date | str) -> str:
    """Prediction log of ``day`` (``day`` as a date, an ISO string)."""
    return f"{PREDICTIONS}/dt={_day(day)}"


def labels_dir(day: dt.date | str) -> str:
    """Lake directory of the labels of ``day``."""
    return f"{LABELS}/dt={_day(day)}"


def serving_model_root(model: str) -> str:
    return f"{SERVING_MODELS}/{model}"


# training ---------------------------------------------------------------------------------
def reference_sample(model: str, run_id: str) -> str:
    """The reference sample kept by training run ``run_id`` (monitoring's drift baseline)."""
    return f"{REFERENCES}/{model}/run={run_id}/reference.parquet"


# monitoring and deployment ----------------------------------------------------------------
def monitoring_record(model: str, day: dt.date | str) -> str:
    return f"{MONITORING}/{model}/dt={_day(day)}/record.json"


def deployment_history(model: str) -> str:
    return f"{DEPLOYMENTS}/{model}/history.jsonl"


def training_ledger_root(model: str) -> str:
    return f"{TRAINING}/{model}"


def training_ledger(model: str, version: dt.date | str) -> str:
    return f"{TRAINING}/{model}/ds={_day(version)}/ledger.json"


def render_tree() -> str:
    """The README's lake tree (``python -m mlpipeline.locations`` prints it)."""
    width = max(len(pattern) for pattern, _ in TREE) + 2
    return "\n".join(f"{pattern.ljust(width)}{what}" for pattern, what in TREE)


if __name__ == "__main__":
    print(render_tree())
