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
    """

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        directories: Callable[[Any], list[str]],
        what: str = "partitions",
        committed: bool = True,
        on_timeout: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
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
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            missing = self._missing or self._check(context)
            reason = (
                f"timed out after {self.timeout:.0f}s waiting for {len(missing)} {self.what}: "
                + ", ".join(missing)
            )
            if self.on_timeout is not None:
                self.on_timeout(context, reason)
            raise AirflowSensorTimeout(reason) from None
