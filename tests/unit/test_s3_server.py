"""The distributed profile's S3 server keeps its objects across a stop and a start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from ports import free_port

from mlpipeline.local import s3_server


def _start(port: int, data: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipeline.local.s3_server", "--port", str(port), "--data", str(data),
         "--bucket", "lake-bucket"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    ready = data.parent / f"{data.name}.ready"
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"not ready: {log.read_text()}"
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_objects_survive_a_restart_and_the_snapshot_is_whole(tmp_path):
    port, data, log = free_port(), tmp_path / "s3" / "data", tmp_path / "s3.log"
    data.parent.mkdir()
    proc = _start(port, data, log)
    s3 = s3_server.client(f"http://127.0.0.1:{port}")
    payload = bytes(range(256)) * 4096  # binary, 1 MiB
    s3.put_object(Bucket="lake-bucket", Key="lake/raw/flights/dt=2013-01-01/part-0.parquet", Body=payload)
    s3.put_object(Bucket="lake-bucket", Key="lake/raw/flights/dt=2013-01-01/_SUCCESS", Body=b"{}")
    s3.create_bucket(Bucket="other")
    s3.put_object(Bucket="other", Key="a/b.txt", Body=b"x")
    _stop(proc)
    assert not (data.parent / "data.ready").exists()
    assert not (data.parent / "data.new").exists()  # swapped in whole

    proc = _start(port, data, log)
    try:
        s3 = s3_server.client(f"http://127.0.0.1:{port}")
        body = s3.get_object(Bucket="lake-bucket", Key="lake/raw/flights/dt=2013-01-01/part-0.parquet")[
            "Body"
        ]
        assert body.read() == payload
        assert s3.get_object(Bucket="other", Key="a/b.txt")["Body"].read() == b"x"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake-bucket")["Contents"]]
        assert sorted(keys) == [
            "lake/raw/flights/dt=2013-01-01/_SUCCESS",
            "lake/raw/flights/dt=2013-01-01/part-0.parquet",
        ]
        assert ": 3 objects restored from" in log.read_text()
    finally:
        _stop(proc)
