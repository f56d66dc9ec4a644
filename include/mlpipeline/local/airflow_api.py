"""A small client of the Airflow 3 REST API (``/api/v2``) for the demo and end-to-end tests."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx

TERMINAL_STATES = {"success", "failed"}
#: How often the waits poll the API (cheap reads; the hand-offs they wait for take ~1 s).
POLL_S = 1.0


class AirflowApiError(RuntimeError):
    """The API refused a call or a DAG run did not finish as expected."""


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        response = self._http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise AirflowApiError(
                f"login as {username!r} failed: HTTP {response.status_code} {response.text}"
            )
        self._http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, retries: int = 10, **kwargs: Any) -> Any:
        for attempt in range(retries + 1):
            response = self._http.request(method, f"/api/v2{path}", **kwargs)
            # SQLite (the embedded default) answers 503 "Database is locked" while the
            # scheduler or dag-processor writes: wait and try again.
            if response.status_code != 503 or attempt == retries:
                break
            time.sleep(min(2 * (attempt + 1), 10))
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> dict:
        """Wait until the dag-processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self._http.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            if time.monotonic() > deadline:
                raise AirflowApiError(f"DAG {dag_id} not parsed after {timeout_s:.0f}s: {response.text}")
            time.sleep(2)

    def import_errors(self) -> list[dict]:
        return self._call("GET", "/importErrors")["import_errors"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def create_backfill(
        self,
        dag_id: str,
        start: dt.date,
        end: dt.date,
        reprocess: str = "failed",
        max_active_runs: int = 4,
        conf: dict | None = None,
    ) -> dict:
        """``POST /backfills`` for the data intervals starting ``start``..``end`` (inclusive)."""
        return self._call(
            "POST",
            "/backfills",
            json={
                "dag_id": dag_id,
                "from_date": f"{start.isoformat()}T00:00:00Z",
                "to_date": f"{end.isoformat()}T00:00:00Z",
                "reprocess_behavior": reprocess,
                "max_active_runs": max_active_runs,
                "dag_run_conf": conf or {},
            },
        )

    def active_backfills(self, dag_id: str) -> list[dict]:
        backfills = self._call("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})["backfills"]
        return [b for b in backfills if not b.get("completed_at")]

    def wait_no_active_backfill(self, dag_id: str, timeout_s: float = 900) -> None:
        """Airflow allows one running backfill per DAG: wait until the previous one completed."""
        deadline = time.monotonic() + timeout_s
        while self.active_backfills(dag_id):
            if time.monotonic() > deadline:
                raise AirflowApiError(f"a backfill of {dag_id} is still running after {timeout_s:.0f}s")
            time.sleep(POLL_S)

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: str | None = None) -> dict:
        return self._call(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf or {}}
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900, missing_ok: bool = False) -> str:
        """Poll run ``run_id`` until it succeeded or failed; return that state.

        ``missing_ok``: a run not created yet (another DAG triggers it) is waited for, not an error.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                state = self.dag_run(dag_id, run_id)["state"]
            except AirflowApiError:
                if not missing_ok:
                    raise
                state = "missing"
            if state in ("success", "failed"):
                return state
            time.sleep(POLL_S)
        raise AirflowApiError(f"{dag_id} run {run_id} not finished after {timeout_s:.0f}s")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict]:
        params.setdefault("limit", 100)
        return self._call("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def all_dag_runs(self, dag_id: str, **params: Any) -> list[dict]:
        """Every run matching ``params``, page after page."""
        runs: list[dict] = []
        while True:
            page = self.dag_runs(dag_id, offset=len(runs), **params)
            runs += page
            if len(page) < params.get("limit", 100):
                return runs

    def run_for_day(self, dag_id: str, day: dt.date) -> dict | None:
        """The newest run of ``dag_id`` whose logical date is ``day`` (a backfilled or scheduled day)."""
        runs = self.dag_runs(
            dag_id,
            order_by="-logical_date",
            logical_date_gte=f"{day.isoformat()}T00:00:00Z",
            logical_date_lte=f"{day.isoformat()}T23:59:59Z",
        )
        return next((r for r in runs if (r.get("logical_date") or "")[:10] == day.isoformat()), None)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self._call("GET", path, params={"limit": 100})["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log as text (one line per structured record's event)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        body = self._call(
            "GET", path, params={"full_content": "true"}, headers={"Accept": "application/json"}
        )
        content = body.get("content") if isinstance(body, dict) else body
        if isinstance(content, list):
            return "\n".join(
                str(item.get("event", item)) if isinstance(item, dict) else str(item) for item in content
            )
        return str(content)

    def wait_for_runs(
        self, dag_id: str, logical_dates: list[dt.date], timeout_s: float = 600
    ) -> dict[dt.date, str]:
        """Wait until the runs of ``logical_dates`` are all finished; return their states."""
        wanted = set(logical_dates)
        deadline = time.monotonic() + timeout_s
        states: dict[dt.date, str] = {}
        # Only the runs of the wanted range, every page of them: a DAG with more runs than one page
        # (a demo rerun: raw_landing holds 100+ days) must not hide the oldest ones.
        window = {
            "logical_date_gte": f"{min(wanted).isoformat()}T00:00:00Z",
            "logical_date_lte": f"{max(wanted).isoformat()}T23:59:59Z",
        }
        while True:
            states = {}
            for run in self.all_dag_runs(dag_id, order_by="-logical_date", **window):
                if run.get("logical_date"):
                    day = dt.date.fromisoformat(run["logical_date"][:10])
                    if day in wanted and day not in states:
                        states[day] = run["state"]
            if len(states) == len(wanted) and all(s in TERMINAL_STATES for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} runs not finished after {timeout_s:.0f}s: {states}")
            time.sleep(POLL_S)
