"""Sensors that wait for lake data and, on timeout, say exactly what is still missing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout


class LakePartitionsSensor(BaseSensorOperator):
    """Wait until every lake directory in ``directories`` is committed (``_SUCCESS`` present).

    With ``committed=False``, a directory only needs to hold a file (append-only directories
    such as ``serving/predictions/dt=D/``).

    ``directories`` is a callable of the task context (so the window follows the run's data
    interval). A :class:`ValueError` from it (a window that can never exist) fails at once;
    on timeout the error lists every partition still missing, and ``on_timeout(context,
    reason)`` (if given) records it (e.g. a quarantine entry).

    ``deferrable=True`` (the default): after a first look, the wait moves to the triggerer
    (:class:`~mlpipeline_airflow.triggers.LakePartitionsTrigger`, polling every
    ``trigger_poll_s``): no worker slot is held and the task resumes within seconds of the
    commit. ``deferrable=False``: classic poking (``mode``, ``poke_interval``).
    """

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        directories: Callable[[Any], list[str]],
        what: str = "partitions",
        committed: bool = True,
        on_timeout: Callable[[Any, str], None] | None = None,
        deferrable: bool = True,
        trigger_poll_s: float = 2.0,
        **kwargs: Any,
    ):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.trigger_poll_s = trigger_poll_s
        self.directories = directories
        self.what = what
        self.committed = committed
        self.on_timeout = on_timeout
        self._missing: list[str] = []

    def _check(self, context: Any) -> list[str]:
        from mlpipeline.lake import Lake

        try:
            wanted = self.directories(context)
        except ValueError as err:
            raise AirflowFailException(str(err)) from None
        return Lake.from_settings().missing(wanted, committed=self.committed)

    def poke(self, context: Any) -> bool:
        self._missing = self._check(context)
        if self._missing:
            shown = ", ".join(self._missing[:10]) + (" …" if len(self._missing) > 10 else "")
            self.log.info("waiting for %d %s: %s", len(self._missing), self.what, shown)
        return not self._missing

    def execute(self, context: Any) -> Any:
        if self.deferrable:
            return self._execute_deferred(context)
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            self._timed_out(context, self._missing or self._check(context))

    def _execute_deferred(self, context: Any) -> None:
        import time

        from mlpipeline_airflow.triggers import LakePartitionsTrigger

        if self.poke(context):
            return
        wanted = self.directories(context)
        started = context["ti"].start_date.timestamp() if context["ti"].start_date else time.time()
        self.defer(
            trigger=LakePartitionsTrigger(
                wanted, self.committed, self.trigger_poll_s, deadline=started + float(self.timeout)
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        """Back from the triggerer: done, or timed out (then the same error and record as poking)."""
        event = event or {}
        if event.get("status") != "done":
            self._timed_out(context, list(event.get("missing") or self._check(context)))
        self.log.info("all %s committed", self.what)

    def _timed_out(self, context: Any, missing: list[str]) -> None:
        reason = f"timed out after {self.timeout:.0f}s waiting for {len(missing)} {self.what}: " + ", ".join(
            missing
        )
        if self.on_timeout is not None:
            self.on_timeout(context, reason)
        raise AirflowSensorTimeout(reason) from None
