"""The deferred lake sensor's trigger: fires within a poll of the commit, or at its deadline."""

from __future__ import annotations

import asyncio
import threading
import time

from mlpipeline_airflow.triggers import LakePartitionsTrigger

from mlpipeline.lake import Lake


def first_event(trigger: LakePartitionsTrigger) -> dict:
    async def run() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(run())


def test_fires_soon_after_the_commit(file_lake: Lake):
    wanted = ["raw/flights/dt=2013-01-05", "raw/weather/dt=2013-01-05"]
    file_lake.publish(wanted[0], {"part-0.parquet": b"x"})
    threading.Timer(0.6, lambda: file_lake.publish(wanted[1], {"part-0.parquet": b"x"})).start()
    started = time.monotonic()
    event = first_event(LakePartitionsTrigger(wanted, committed=True, poll_s=0.2, deadline=time.time() + 30))
    assert event == {"status": "done", "missing": []}
    assert time.monotonic() - started < 5


def test_times_out_naming_what_is_missing(file_lake: Lake):
    trigger = LakePartitionsTrigger(["serving/predictions/dt=2013-01-20"], False, 0.1, time.time() + 0.5)
    assert first_event(trigger) == {"status": "timeout", "missing": ["serving/predictions/dt=2013-01-20"]}
    # What the triggerer stores and rebuilds the trigger from.
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlpipeline_airflow.triggers.LakePartitionsTrigger"
    assert LakePartitionsTrigger(**kwargs).directories == trigger.directories
