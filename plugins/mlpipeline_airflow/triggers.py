"""Triggers (run by the triggerer): wait for lake partitions without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class LakePartitionsTrigger(BaseTrigger):
    """Fire when every directory is committed (or holds a file), or at ``deadline`` (epoch seconds).

    Polls every ``poll_s`` seconds in the triggerer's event loop (the lake calls run in a
    thread): a deferred sensor reacts within seconds of the data's commit marker, where a
    rescheduled one waits for its next poke plus the scheduler's round trip.
    """

    def __init__(self, directories: list[str], committed: bool, poll_s: float, deadline: float) -> None:
        super().__init__()
        self.directories = list(directories)
        self.committed = committed
        self.poll_s = poll_s
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "directories": self.directories,
                "committed": self.committed,
                "poll_s": self.poll_s,
                "deadline": self.deadline,
            },
        )

    def _missing(self) -> list[str]:
        from mlpipeline.lake import Lake

        return Lake.from_settings().missing(self.directories, committed=self.committed)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            missing = await asyncio.to_thread(self._missing)
            if not missing:
                yield TriggerEvent({"status": "done", "missing": []})
                return
            if time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "missing": missing})
                return
            await asyncio.sleep(min(self.poll_s, max(0.0, self.deadline - time.time())))
