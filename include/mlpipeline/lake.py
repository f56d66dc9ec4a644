"""The lake: every storage path of the pipeline, on a local directory or on S3.

The root comes from ``MLP_LAKE_URI`` (``file:///…`` by default, ``s3://bucket/prefix`` in
production, reached through the Airflow connection ``MLP_AWS_CONN_ID`` via
``ObjectStoragePath``). Both backends are fsspec filesystems, so reads, writes, listing and
publishing behave the same.

Publishing protocol (a reader never sees a half-written directory, on S3 too):
a directory such as ``raw/flights/dt=2013-01-02`` is *committed* when its ``_SUCCESS``
marker exists. Writers put the files under ``<dir>/_attempts/<attempt>/`` and then write
the marker last, in one atomic object write; the marker is JSON naming the committed
attempt and its files. Readers resolve files through the marker only. Re-publishing a
directory writes a new attempt and swaps the marker, then deletes older attempts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fsspec
    import pandas as pd

    from mlpipeline.settings import Settings

SUCCESS_MARKER = "_SUCCESS"
ATTEMPTS_DIR = "_attempts"


class LakeError(RuntimeError):
    """A lake path is missing, uncommitted or unreadable."""


@dataclass(frozen=True)
class Commit:
    """What a ``_SUCCESS`` marker says about a committed directory."""

    directory: str
    attempt: str
    files: tuple[str, ...]
    committed_at: str
    meta: dict[str, Any]

    def file_paths(self) -> list[str]:
        """Paths (relative to the lake root) of the committed files."""
        return [posixpath.join(self.directory, ATTEMPTS_DIR, self.attempt, f) for f in self.files]


class Lake:
    """A lake rooted at ``root_uri`` on the fsspec filesystem ``fs``.

    Paths given to methods are relative to the root, with ``/`` separators.
    """

    def __init__(self, root_uri: str, fs: fsspec.AbstractFileSystem) -> None:
        self.root_uri = root_uri.rstrip("/")
        self.fs = fs
        self._root = self._strip_protocol(self.root_uri)
        if getattr(fs, "dircache", None) is not None and getattr(fs.dircache, "use_listings_cache", False):
            # Other processes publish into the lake: a cached listing (s3fs keeps one per
            # directory, for the life of the process) would hide their new versions and
            # markers from a long-running reader such as the demo or a test.
            from fsspec.dircache import DirCache

            fs.dircache = DirCache(use_listings_cache=False)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_uri(cls, root_uri: str, aws_conn_id: str = "aws_default") -> Lake:
        """Open the lake at ``root_uri`` (``file://`` or ``s3://`` through ``aws_conn_id``)."""
        if root_uri.startswith("file://"):
            import fsspec

            return cls(root_uri, fsspec.filesystem("file", auto_mkdir=True))
        if root_uri.startswith("s3://"):
            from airflow.sdk import ObjectStoragePath

            return cls(root_uri, ObjectStoragePath(root_uri, conn_id=aws_conn_id).fs)
        raise LakeError(f"unsupported lake URI {root_uri!r}; expected file:///… or s3://bucket/prefix")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Lake:
        """Open the lake the settings name."""
        if settings is None:
            from mlpipeline.settings import get_settings

            settings = get_settings()
        return cls.from_uri(settings.resolved_lake_uri, settings.aws_conn_id)

    @staticmethod
    def _strip_protocol(uri: str) -> str:
        return uri.split("://", 1)[1] if "://" in uri else uri

    @property
    def is_local(self) -> bool:
        return self.root_uri.startswith("file://")

    # -- paths ------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of ``parts`` under the root."""
        rel = posixpath.join(*parts) if parts else ""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise LakeError(f"lake paths are relative and stay under the root, got {rel!r}")
        return posixpath.join(self._root, rel) if rel else self._root

    def uri(self, *parts: str) -> str:
        """Full URI of ``parts`` under the root (``file:///…`` or ``s3://…``)."""
        scheme = self.root_uri.split("://", 1)[0]
        return f"{scheme}://{self.path(*parts)}"

    # -- plain objects ----------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise LakeError(f"{self.uri(rel)} does not exist") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one object atomically (temp file + rename locally, one PUT on S3)."""
        target = self.path(rel)
        if self.is_local:
            import os

            os.makedirs(posixpath.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def append_line(self, rel: str, line: str) -> None:
        """Append one line to a small text object (read-modify-write on S3)."""
        old = self.read_bytes(rel) if self.exists(rel) else b""
        self.write_bytes(rel, old + line.rstrip("\n").encode() + b"\n")

    def list_dirs(self, rel: str) -> list[str]:
        """Names of the sub-directories of ``rel`` (empty if it does not exist)."""
        target = self.path(rel)
        if not self.fs.exists(target):
            return []
        out = []
        for info in self.fs.ls(target, detail=True):
            if info["type"] == "directory":
                out.append(posixpath.basename(info["name"].rstrip("/")))
        return sorted(out)

    def delete(self, rel: str) -> None:
        target = self.path(rel)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    # -- committed directories --------------------------------------------------------
    def is_committed(self, directory: str) -> bool:
        return self.exists(posixpath.join(directory, SUCCESS_MARKER))

    def read_commit(self, directory: str) -> Commit:
        """The commit of ``directory``; :class:`LakeError` if it was never committed."""
        marker = posixpath.join(directory, SUCCESS_MARKER)
        if not self.exists(marker):
            raise LakeError(f"{self.uri(directory)} is not committed (no {SUCCESS_MARKER} marker)")
        body = self.read_json(marker)
        return Commit(
            directory=directory,
            attempt=body["attempt"],
            files=tuple(body["files"]),
            committed_at=body["committed_at"],
            meta=body.get("meta", {}),
        )

    def publish(
        self,
        directory: str,
        files: Mapping[str, bytes],
        meta: Mapping[str, Any] | None = None,
    ) -> Commit:
        """Write ``files`` under ``directory`` and commit them atomically (marker last).

        An existing commit is replaced as a whole; older attempts are removed afterwards.
        """
        if not files:
            raise LakeError(f"refusing to publish {self.uri(directory)} with no files")
        attempt = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        for name, data in files.items():
            self.write_bytes(posixpath.join(directory, ATTEMPTS_DIR, attempt, name), data)
        return self._commit(directory, attempt, sorted(files), meta or {})

    def publish_local_dir(
        self, directory: str, local_dir: str, meta: Mapping[str, Any] | None = None
    ) -> Commit:
        """Upload every file of a local staging directory and commit them as ``directory``."""
        import os

        names = []
        for base, _dirs, filenames in os.walk(local_dir):
            for filename in filenames:
                full = os.path.join(base, filename)
                names.append(os.path.relpath(full, local_dir).replace(os.sep, "/"))
        if not names:
            raise LakeError(f"refusing to publish {self.uri(directory)}: staging {local_dir} is empty")
        attempt = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        for name in names:
            target = self.path(directory, ATTEMPTS_DIR, attempt, name)
            if self.is_local:
                os.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.put_file(os.path.join(local_dir, name), target)
        return self._commit(directory, attempt, sorted(names), meta or {})

    def _commit(self, directory: str, attempt: str, names: list[str], meta: Mapping[str, Any]) -> Commit:
        body = {
            "attempt": attempt,
            "files": names,
            "committed_at": dt.datetime.now(dt.UTC).isoformat(),
            "meta": dict(meta),
        }
        self.write_json(posixpath.join(directory, SUCCESS_MARKER), body)
        self._drop_stale_attempts(directory, keep=attempt)
        return Commit(directory, attempt, tuple(names), body["committed_at"], dict(meta))

    def _drop_stale_attempts(self, directory: str, keep: str) -> None:
        for name in self.list_dirs(posixpath.join(directory, ATTEMPTS_DIR)):
            if name != keep:
                self.delete(posixpath.join(directory, ATTEMPTS_DIR, name))

    # -- tables -----------------------------------------------------------------------
    def publish_frames(
        self,
        directory: str,
        frames: Mapping[str, pd.DataFrame],
        meta: Mapping[str, Any] | None = None,
    ) -> Commit:
        """Publish dataframes as Parquet files named ``<key>.parquet`` under ``directory``."""
        return self.publish(
            directory, {f"{name}.parquet": frame_to_parquet(df) for name, df in frames.items()}, meta
        )

    def read_frame(self, directory: str) -> pd.DataFrame:
        """Read every committed Parquet file of ``directory`` into one dataframe."""
        import pandas as pd

        commit = self.read_commit(directory)
        parts = [
            pd.read_parquet(io.BytesIO(self.read_bytes(p)))
            for p in commit.file_paths()
            if p.endswith(".parquet")
        ]
        if not parts:
            raise LakeError(f"{self.uri(directory)} holds no Parquet files")
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def committed_partitions(self, table_dir: str, key: str = "dt") -> list[str]:
        """Values of ``key=`` partitions under ``table_dir`` that are committed, sorted."""
        prefix = f"{key}="
        return [
            name.removeprefix(prefix)
            for name in self.list_dirs(table_dir)
            if name.startswith(prefix) and self.is_committed(posixpath.join(table_dir, name))
        ]

    def missing(self, directories: Iterable[str], committed: bool = True) -> list[str]:
        """The directories among ``directories`` that are not committed.

        ``committed=False``: that hold no file yet (for directories written by appending
        files, such as the prediction log, which has no ``_SUCCESS`` marker).
        """
        if committed:
            return [d for d in directories if not self.is_committed(d)]
        return [d for d in directories if not self.has_files(d)]

    def has_files(self, directory: str) -> bool:
        """``directory`` exists and holds at least one file (not only sub-directories)."""
        try:
            entries = self.fs.ls(self.path(directory), detail=True)
        except FileNotFoundError:
            return False
        return any(e.get("type") == "file" for e in entries)


def frame_to_parquet(df: pd.DataFrame) -> bytes:
    """Serialise a dataframe to Parquet bytes (no index, zstd)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()
