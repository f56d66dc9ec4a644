"""The lake behaves the same on a local directory and on an S3-protocol server (moto)."""

from __future__ import annotations

import pandas as pd
import pytest

from mlpipeline.lake import ATTEMPTS_DIR, Lake, LakeError


def test_bytes_and_json_roundtrip(lake: Lake):
    lake.write_bytes("a/b/c.bin", b"\x00\x01payload")
    assert lake.read_bytes("a/b/c.bin") == b"\x00\x01payload"
    lake.write_json("a/meta.json", {"x": 1, "when": "2013-01-02"})
    assert lake.read_json("a/meta.json") == {"x": 1, "when": "2013-01-02"}
    assert lake.exists("a/meta.json")
    assert not lake.exists("a/nothing.json")
    assert lake.list_dirs("a") == ["b"]
    assert lake.list_dirs("not/there") == []


def test_missing_object_names_its_uri(lake: Lake):
    with pytest.raises(LakeError, match=r"nope\.json does not exist"):
        lake.read_bytes("nope.json")


def test_paths_stay_under_the_root(lake: Lake):
    with pytest.raises(LakeError, match="stay under the root"):
        lake.path("../escape")
    assert lake.uri("raw", "x").startswith(lake.root_uri.split("://")[0] + "://")


def test_publish_commits_marker_last_and_reads_back(lake: Lake):
    frame = pd.DataFrame({"k": [1, 2, 3], "v": ["a", None, "c"]})
    commit = lake.publish_frames("t/dt=2013-01-01", {"part-0": frame}, meta={"rows": 3})
    assert lake.is_committed("t/dt=2013-01-01")
    assert commit.meta == {"rows": 3}
    back = lake.read_frame("t/dt=2013-01-01")
    pd.testing.assert_frame_equal(back, frame)
    assert lake.committed_partitions("t") == ["2013-01-01"]


def test_uncommitted_directory_is_invisible(lake: Lake):
    # A writer that crashed before the marker: files exist, the directory is not committed.
    lake.write_bytes(f"t/dt=2013-01-02/{ATTEMPTS_DIR}/crashed/part-0.parquet", b"half")
    assert not lake.is_committed("t/dt=2013-01-02")
    assert lake.committed_partitions("t") == []
    assert lake.missing(["t/dt=2013-01-02"]) == ["t/dt=2013-01-02"]
    with pytest.raises(LakeError, match="not committed"):
        lake.read_frame("t/dt=2013-01-02")


def test_republish_replaces_whole_and_drops_old_attempts(lake: Lake):
    first = lake.publish_frames(
        "t/dt=2013-01-03", {"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"x": [2]})}
    )
    # A reader that resolved the first commit keeps a consistent view until the swap.
    assert sorted(lake.read_frame("t/dt=2013-01-03")["x"]) == [1, 2]
    second = lake.publish_frames("t/dt=2013-01-03", {"a": pd.DataFrame({"x": [7]})})
    assert second.attempt != first.attempt
    assert list(lake.read_frame("t/dt=2013-01-03")["x"]) == [7]
    assert lake.list_dirs(f"t/dt=2013-01-03/{ATTEMPTS_DIR}") == [second.attempt]


def test_crash_during_republish_keeps_previous_commit(lake: Lake):
    lake.publish_frames("t/dt=2013-01-04", {"a": pd.DataFrame({"x": [1]})})
    lake.write_bytes(f"t/dt=2013-01-04/{ATTEMPTS_DIR}/zz-crashed/a.parquet", b"garbage")
    assert list(lake.read_frame("t/dt=2013-01-04")["x"]) == [1]


def test_publish_refuses_empty(lake: Lake):
    with pytest.raises(LakeError, match="no files"):
        lake.publish("t/dt=2013-01-05", {})


def test_publish_local_dir(lake: Lake, tmp_path):
    staging = tmp_path / "staging"
    (staging / "train").mkdir(parents=True)
    (staging / "train" / "part-0.parquet").write_bytes(b"t")
    (staging / "manifest.json").write_text("{}")
    commit = lake.publish_local_dir("d/ds=2013-01-05", str(staging), meta={"v": 1})
    assert commit.files == ("manifest.json", "train/part-0.parquet")
    assert [lake.read_bytes(p) for p in commit.file_paths()] == [b"{}", b"t"]


def test_append_line(lake: Lake):
    lake.append_line("audit/history.jsonl", '{"n": 1}')
    lake.append_line("audit/history.jsonl", '{"n": 2}')
    assert lake.read_bytes("audit/history.jsonl").decode().splitlines() == ['{"n": 1}', '{"n": 2}']


def test_unsupported_scheme():
    with pytest.raises(LakeError, match="unsupported lake URI"):
        Lake.from_uri("gs://bucket/x")


def test_a_partition_another_process_commits_is_seen_by_a_reader_that_listed_before(lake: Lake):
    """A long-running reader (the demo, a test) lists, another process commits: no stale listing."""
    lake.write_json("t/ds=2013-01-01/_SUCCESS", {"attempt": "a", "files": [], "committed_at": "x"})
    assert lake.committed_partitions("t", key="ds") == ["2013-01-01"]
    other = _other_client(lake)
    other("t/ds=2013-01-02/part.parquet", b"p")
    other("t/ds=2013-01-02/_SUCCESS", b'{"attempt": "b", "files": [], "committed_at": "y"}')
    assert lake.committed_partitions("t", key="ds") == ["2013-01-01", "2013-01-02"]
    assert lake.is_committed("t/ds=2013-01-02")


def _other_client(lake: Lake):
    """A writer that shares nothing with ``lake``'s filesystem object (as another process)."""
    if lake.is_local:
        from pathlib import Path

        def write(rel: str, body: bytes) -> None:
            target = Path(lake.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)

        return write
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, _, prefix = lake.path().partition("/")
    hook = S3Hook(aws_conn_id="aws_default")
    return lambda rel, body: hook.load_bytes(body, key=f"{prefix}/{rel}", bucket_name=bucket, replace=True)
