"""Every lake location is named in one module; the README's lake tree is that module's."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from mlpipeline import locations

README = Path(__file__).resolve().parents[2] / "README.md"
DAY = dt.date(2013, 1, 5)


def _readme_tree() -> list[str]:
    text = README.read_text()
    marker = "<!-- lake-tree: generated from mlpipeline.locations.TREE"
    assert marker in text, "README lost its lake tree"
    block = re.search(r"```\n(.*?)```", text[text.index(marker) :], re.S)
    assert block
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def test_readme_tree_is_the_locations_module():
    assert _readme_tree() == [pattern for pattern, _ in locations.TREE]
    assert locations.render_tree() in README.read_text(), "regenerate it: python -m mlpipeline.locations"


def test_every_location_function_is_in_the_tree():
    """Each location function's output matches one pattern of the tree."""
    made = {
        locations.raw_partition("flights", DAY): "raw/<table>/dt=YYYY-MM-DD/",
        locations.raw_profile(DAY, "0123abcd"): "raw/_profiles/dt=YYYY-MM-DD/<hash>.json",
        locations.dataset_dir("flights_delay", DAY): "datasets/<name>/ds=YYYY-MM-DD/",
        locations.golden_dir("g", "v1"): "golden/<name>/<version>/",
        locations.quarantine_dir("flights_delay", DAY): "quarantine/<name>/ds=YYYY-MM-DD/",
        locations.quality_report_dir("flights_delay", "2013-01-05"): "reports/quality/<name>/<version>/",
        locations.evaluation_report_dir("m", 3): "reports/evaluation/<model>/v<N>/",
        locations.drift_report_dir("m", DAY): "reports/drift/<model>/dt=YYYY-MM-DD/",
        locations.predictions_dir(DAY): "serving/predictions/dt=YYYY-MM-DD/",
        locations.labels_dir(DAY): "serving/labels/dt=YYYY-MM-DD/",
        locations.serving_model_root("m"): "serving/models/<model>/",
        locations.monitoring_record("m", DAY): "monitoring/<model>/dt=YYYY-MM-DD/record.json",
        locations.deployment_history("m"): "deployments/<model>/history.jsonl",
        locations.reference_sample("m", "abc123"): "references/<model>/run=<run_id>/reference.parquet",
        locations.training_ledger("m", DAY): "training/<model>/ds=YYYY-MM-DD/ledger.json",
    }
    patterns = {p for p, _ in locations.TREE}
    assert set(made.values()) == patterns
    for path, pattern in made.items():
        regex = re.sub(
            r"<[^>]+>", r"[^/]+", re.escape(pattern).replace("YYYY\\-MM\\-DD", r"\d{4}-\d{2}-\d{2}")
        )
        assert re.fullmatch(regex.rstrip("/") + "/?", path), (path, pattern)


def test_days_as_dates_or_strings():
    assert (
        locations.predictions_dir(DAY)
        == locations.predictions_dir("2013-01-05")
        == "serving/predictions/dt=2013-01-05"
    )
    assert locations.monitoring_record("m", DAY) == "monitoring/m/dt=2013-01-05/record.json"
    assert locations.evaluation_report_json("m", "2") == "reports/evaluation/m/v2/report.json"
