"""What became of every published dataset version: trained, superseded by a newer one, or refused.

Airflow batches asset events: several versions published close together reach one
``model_training`` run, and one of them can even be consumed without appearing in the run's
``triggering_asset_events`` (apache/airflow#54659), or wait in the queue for the next event
(apache/airflow#56050). The lake, not the event list, therefore says what is left to train:
a published version with no ledger entry is *pending*. A run trains the newest pending
version (at least the one its events announced) and records every older pending version as
superseded by it, so no version is silently skipped and none waits for tomorrow's event.

One small JSON document per version, ``training/<model>/ds=<version>.json``, written whole.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from mlpipeline import locations
from mlpipeline.lake import Lake

TRAINED = "trained"
SUPERSEDED = "superseded"
REFUSED = "refused"


@dataclass(frozen=True)
class Selection:
    """The version a run trains and the older pending versions it supersedes."""

    version: str | None
    superseded: list[str] = field(default_factory=list)
    #: why nothing is trained (the announced versions were trained already), else None
    nothing_to_do: str | None = None


def read(lake: Lake, model: str, version: str) -> dict[str, Any] | None:
    path = locations.training_ledger(model, version)
    return lake.read_json(path) if lake.exists(path) else None


def recorded(lake: Lake, model: str) -> set[str]:
    """Versions with a ledger entry (trained or superseded)."""
    root = locations.training_ledger_root(model)
    return {
        name.removeprefix("ds=")
        for name in lake.list_dirs(root)
        if name.startswith("ds=") and lake.exists(locations.training_ledger(model, name.removeprefix("ds=")))
    }


def pending(lake: Lake, dataset_name: str, model: str, done: set[str] | None = None) -> list[str]:
    """Published versions (oldest first) that were neither trained nor superseded (``done``: the
    :func:`recorded` versions, when the caller has them already)."""
    published = lake.committed_partitions(locations.datasets_root(dataset_name), key="ds")
    done = recorded(lake, model) if done is None else done
    return [v for v in published if v not in done]


def select(announced: list[str], pending_versions: list[str], done: set[str]) -> Selection:
    """Train the newest version announced or pending; older pending versions are superseded.

    ``announced``: the versions the run's asset events name (possibly incomplete); ``done``:
    the versions with a ledger entry already.
    """
    todo = sorted(set(pending_versions) | (set(announced) - done))
    if not todo:
        shown = ", ".join(sorted(set(announced))) or "none announced"
        return Selection(
            None,
            nothing_to_do=f"nothing left to train: dataset version(s) {shown} already trained or superseded, "
            "and no published version is pending",
        )
    version = todo[-1]
    return Selection(version, [v for v in pending_versions if v < version])


def record(lake: Lake, model: str, version: str, status: str, **fields: Any) -> dict[str, Any]:
    """Write version's entry (overwrites: a retried run writes the same facts)."""
    entry = {
        "dataset_version": version,
        "status": status,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }
    lake.write_json(locations.training_ledger(model, version), entry)
    return entry
