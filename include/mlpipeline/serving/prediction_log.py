"""The prediction log: every prediction, buffered and written to the lake as Parquet.

``serving/predictions/dt=YYYY-MM-DD/part-<segment>.parquet``: one file per flush and day.
Rows are flushed when the buffer reaches ``flush_rows`` or ``flush_s`` has passed, and on
shutdown. A write that fails (lake unavailable) spools the batch to local disk; spooled
files are retried at every flush. ``lost`` counts rows that could be kept nowhere (it must
stay 0).

Every row is also appended to a local journal segment before the request is answered (one
``write`` to the kernel, which outlives the process): a server killed with SIGKILL, or by
the OOM killer, loses nothing it answered — the next start writes the segments it left to the
lake. A flush names its files after the segment, so a segment written twice (killed between
the lake write and the segment's removal) overwrites the same files, never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.lake import Lake

log = logging.getLogger(__name__)


class PredictionLog:
    def __init__(self, lake: Lake, spool_dir: Path, flush_rows: int = 500, flush_s: float = 5.0) -> None:
        self.lake = lake
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by append when the buffer is full
        self._thread: threading.Thread | None = None
        self.logged = 0
        self.spooled = 0
        self.lost = 0
        self.flush_errors = 0
        self.recovered = 0  # rows a killed predecessor answered and left in its journal
        self.journal_errors = 0
        self.journal_dir = spool_dir.parent / "journal"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self._left_over = sorted(self.journal_dir.glob("*.jsonl"))  # before this process writes any
        self._segment, self._journal = self._open_segment()

    # -- producer side (request path: append only) ------------------------------------------
    def append(self, rows: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        with self._lock:
            try:
                self._journal.write(lines)
                self._journal.flush()  # in the kernel now: survives this process being killed
            except OSError:  # a full disk must not fail the request: the rows are still buffered
                self.journal_errors += 1
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full and self._thread is not None:
            self._wake.set()  # the flusher thread writes; no thread is started on the request path

    @property
    def pending(self) -> int:
        return len(self._rows)

    # -- background flusher ----------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write everything still buffered (graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        with self._lock:
            self._journal.close()
        (self.journal_dir / f"{self._segment}.jsonl").unlink(missing_ok=True)  # empty: all flushed

    def flush(self) -> int:
        """Write buffered rows (and retry spooled files); return the rows written to the lake."""
        with self._flush_lock:
            with self._lock:
                if not self._rows:
                    rows, segment = [], None
                else:
                    rows, self._rows = self._rows, []
                    segment = self._segment
                    self._journal.close()
                    self._segment, self._journal = self._open_segment()
            written = self._retry_spool()
            if segment is not None:
                written += self._write_segment(segment, rows)
            return written

    def recover(self) -> int:
        """Write to the lake the journal segments a killed predecessor left; the rows recovered."""
        rows_recovered = 0
        for path in self._left_over:
            if not _unowned(path):
                continue  # a live server's open segment (one state folder, two servers)
            rows, torn = _read_journal(path)
            if torn:
                log.warning("prediction log: %s ends in a torn line (killed mid-write): skipped", path.name)
            self.recovered += len(rows)
            rows_recovered += len(rows)
            self._write_segment(path.stem, rows)
        self._left_over = []
        if rows_recovered:
            log.warning("prediction log: recovered %d rows a killed server had answered", rows_recovered)
        return rows_recovered

    def _open_segment(self):
        import fcntl

        segment = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        journal = (self.journal_dir / f"{segment}.jsonl").open("a", encoding="utf-8")
        fcntl.flock(journal, fcntl.LOCK_EX)  # released by the kernel when this process dies
        return segment, journal

    def _write_segment(self, segment: str, rows: list[dict[str, Any]]) -> int:
        """Write (or spool) one segment's rows, then drop its journal file; rows written."""
        written = 0
        name = f"part-{segment}.parquet"
        for day, batch in _by_day(rows).items():
            data = _to_parquet(batch)
            try:
                self.lake.write_bytes(f"{locations.predictions_dir(day)}/{name}", data)
                self.logged += len(batch)
                written += len(batch)
            except Exception as err:  # the lake is down: keep the rows on local disk
                self.flush_errors += 1
                log.warning("prediction log: lake write failed (%s); spooling %d rows", err, len(batch))
                try:
                    spooled = self.spool_dir / f"dt={day}__{name}"
                    tmp = spooled.with_suffix(".tmp")
                    tmp.write_bytes(data)
                    tmp.replace(spooled)
                    self.spooled += len(batch)
                except OSError:
                    log.exception("prediction log: cannot spool %d rows", len(batch))
                    self.lost += len(batch)
                    return written  # keep the journal segment: the next start tries again
        (self.journal_dir / f"{segment}.jsonl").unlink(missing_ok=True)
        return written

    def _retry_spool(self) -> int:
        written = 0
        for path in sorted(self.spool_dir.glob("dt=*__*.parquet")):
            day, name = path.name.split("__", 1)
            try:
                self.lake.write_bytes(f"{locations.PREDICTIONS}/{day}/{name}", path.read_bytes())
            except Exception:
                return written  # still down; try again at the next flush
            rows = _row_count(path)
            path.unlink()
            self.spooled -= rows
            self.logged += rows
            written += rows
        return written


def _unowned(path: Path) -> bool:
    """No live process holds ``path``'s lock (its writer exited or was killed)."""
    import fcntl
    import os

    try:
        fd = os.open(path, os.O_WRONLY)  # no O_CREAT: never re-creates a segment another start took
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _read_journal(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of a journal segment, and whether its last line was torn (not parsed)."""
    rows, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn = True
    return rows, torn


def _by_day(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["dt"], []).append(row)
    return out


def _to_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def read_day(lake: Lake, day: dt.date | str):
    """Every logged prediction of one day as a dataframe (empty frame if none)."""
    import pandas as pd

    day = day if isinstance(day, str) else day.isoformat()
    directory = locations.predictions_dir(day)
    if not lake.exists(directory):
        return pd.DataFrame()
    paths = sorted(p for p in lake.fs.ls(lake.path(directory), detail=False) if str(p).endswith(".parquet"))
    frames = [pd.read_parquet(io.BytesIO(lake.fs.cat_file(p))) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
