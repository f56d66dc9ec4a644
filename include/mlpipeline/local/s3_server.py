"""The distributed profile's S3 server on this machine: moto's S3 in one process, kept on disk.

moto holds objects in memory. This launcher makes it behave like a small MinIO for the local
profile: at start it loads the snapshot directory (``<data>/<bucket>/<key>``) back through the
S3 API and creates the buckets; at SIGTERM (``make down``, a restart) it writes every object
to a fresh snapshot and swaps it in whole. A SIGKILL loses what was written since the start —
the compose file runs MinIO on a volume instead.

``python -m mlpipeline.local.s3_server --host 127.0.0.1 --port 9000 --data DIR --bucket B``
"""

from __future__ import annotations

import argparse
import shutil
import signal
import threading
from pathlib import Path

#: moto accepts any credentials; these are what the profile's connections carry.
ACCESS_KEY = "mlpipeline"
SECRET_KEY = "mlpipeline-local"  # noqa: S105 (moto takes any key: a local stand-in, no secret)
REGION = "us-east-1"


def client(endpoint_url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def restore(s3, data: Path, buckets: list[str]) -> int:
    """Create ``buckets`` and upload every snapshot file; returns the number of objects."""
    count = 0
    names = set(buckets) | ({p.name for p in data.iterdir() if p.is_dir()} if data.is_dir() else set())
    for bucket in sorted(names):
        s3.create_bucket(Bucket=bucket)
        root = data / bucket
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            s3.put_object(Bucket=bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes())
            count += 1
    return count


def snapshot(s3, data: Path) -> int:
    """Write every object of every bucket under ``data`` (a new directory swapped in whole)."""
    fresh = data.with_name(data.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    count = 0
    for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
        (fresh / bucket).mkdir()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = fresh / bucket / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                count += 1
    old = data.with_name(data.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if data.exists():
        data.rename(old)
    fresh.rename(data)
    shutil.rmtree(old, ignore_errors=True)
    return count


def main(argv: list[str] | None = None) -> int:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="snapshot directory")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    s3 = client(f"http://{args.host}:{args.port}")
    restored = restore(s3, args.data, args.bucket)
    print(
        f"S3 server on http://{args.host}:{args.port}: {restored} objects restored from {args.data}",
        flush=True,
    )
    # Ready only now: the stack's health check waits for this marker, so no client sees an
    # empty lake while the snapshot is loading.
    (args.data.parent / f"{args.data.name}.ready").write_text(str(restored))
    stop.wait()
    (args.data.parent / f"{args.data.name}.ready").unlink(missing_ok=True)
    saved = snapshot(s3, args.data)
    print(f"S3 server stopping: {saved} objects written to {args.data}", flush=True)
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
