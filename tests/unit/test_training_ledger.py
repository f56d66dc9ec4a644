"""The training ledger: every published dataset version trained, superseded or refused, none skipped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlpipeline import locations
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import get_pipeline_config
from mlpipeline.training import ledger
from mlpipeline.training import steps as training_steps

CFG = get_pipeline_config()
NAME, MODEL = CFG.dataset.name, CFG.training.model_name


def publish(lake: Lake, *versions: str) -> None:
    for version in versions:
        lake.publish(locations.dataset_dir(NAME, version), {"manifest.json": b"{}"})


def events(*versions: str) -> dict:
    return {"training_dataset": [SimpleNamespace(extra={"version": v}) for v in versions]}


def test_select_trains_the_newest_and_supersedes_older_pending():
    chosen = ledger.select(["2013-01-29"], ["2013-01-28", "2013-01-29", "2013-01-30"], set())
    assert chosen.version == "2013-01-30"  # published meanwhile: nothing waits for its own event
    assert chosen.superseded == ["2013-01-28", "2013-01-29"]


def test_select_with_everything_done_has_nothing_to_do():
    chosen = ledger.select(["2013-01-29"], [], {"2013-01-29"})
    assert chosen.version is None
    assert "already trained or superseded" in chosen.nothing_to_do


def test_an_event_missing_from_the_batch_is_still_trained_or_superseded(file_lake):
    """apache/airflow#54659: the run's events name v1 only, though v2 was published (and consumed)."""
    publish(file_lake, "2013-01-28", "2013-01-29")
    selection = training_steps.select_version(events("2013-01-28"), {}, file_lake)
    assert selection.version == "2013-01-29"
    assert selection.superseded == ["2013-01-28"]
    training_steps.record_superseded(selection, "run-1", file_lake)
    training_steps.record_trained(
        {"model": MODEL, "dataset_version": "2013-01-29", "version": "3", "run_id": "abc"}, "run-1", file_lake
    )
    assert ledger.read(file_lake, MODEL, "2013-01-28")["status"] == ledger.SUPERSEDED
    assert ledger.read(file_lake, MODEL, "2013-01-28")["by"] == "2013-01-29"
    assert ledger.read(file_lake, MODEL, "2013-01-29")["model_version"] == "3"
    assert ledger.pending(file_lake, NAME, MODEL) == []
    # The queued event of 2013-01-29 later creates its own run: it has nothing left to do.
    later = training_steps.select_version(events("2013-01-29"), {}, file_lake)
    assert later.version is None
    assert later.nothing_to_do
    # A version published while that run trained is what catch_up hands to the next run.
    publish(file_lake, "2013-01-30")
    assert training_steps.pending_after("2013-01-29", file_lake) == ["2013-01-30"]
    assert training_steps.select_version(None, {}, file_lake, manual=True).version == "2013-01-30"


def test_an_explicit_version_is_trained_as_asked(file_lake):
    publish(file_lake, "2013-01-28", "2013-01-29")
    selection = training_steps.select_version(None, {"dataset_version": "2013-01-28"}, file_lake, manual=True)
    assert selection.version == "2013-01-28"
    assert selection.superseded == []


def test_manual_run_with_nothing_pending_retrains_the_newest(file_lake):
    publish(file_lake, "2013-01-28")
    ledger.record(file_lake, MODEL, "2013-01-28", ledger.TRAINED, model_version="1")
    assert training_steps.select_version(None, {}, file_lake, manual=True).version == "2013-01-28"


def test_asset_run_without_any_version_is_refused(file_lake):
    with pytest.raises(training_steps.DatasetRefusedError, match="no dataset version"):
        training_steps.select_version({"training_dataset": []}, {}, file_lake)


def test_a_refused_version_does_not_block_later_runs(file_lake):
    """A published version check_dataset refuses is recorded, so the next run moves on."""
    publish(file_lake, "2013-01-28")
    overlapping = {
        "window": {"start": "2013-01-02", "end": "2013-01-29"},
        "golden": {"overlaps_window": True},
    }
    file_lake.publish(locations.dataset_dir(NAME, "2013-01-29"), {"part.bin": b"x"}, meta=overlapping)
    with pytest.raises(training_steps.DatasetRefusedError, match="overlap"):
        training_steps.check_selected("2013-01-29", "run-1", file_lake)
    assert ledger.read(file_lake, MODEL, "2013-01-29")["status"] == ledger.REFUSED
    assert training_steps.select_version(events("2013-01-29"), {}, file_lake).version == "2013-01-28"
