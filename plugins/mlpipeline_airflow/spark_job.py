"""The dataset job's operator: one standalone PySpark script, run where ``spark_default`` says.

* connection type ``spark`` (``local[2]``, ``spark://master:7077``, ``yarn``…): ``spark-submit``
  through the Spark provider's ``SparkSubmitHook``, exactly as ``SparkSubmitOperator`` does;
* connection type ``spark_connect`` (the embedded stack's warm Spark Connect server, or any
  ``sc://`` endpoint): the same script runs as ``__main__`` inside the task process with
  ``SPARK_REMOTE`` set, so it starts no JVM and no interpreter of its own. The task process was
  forked from a scheduler that preloaded the Spark Connect client (``MLP_PRELOAD_MODULES``):
  measured, a separate client process paid 1.3 s of imports (4 s before the libraries' bytecode
  was compiled) on top of a 2.7 s job.

The provider is imported only when the task runs: a DAG file that uses this operator parses
without loading it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import runpy
import sys
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

#: The job's exit code for bad input (``spark_jobs/build_dataset.py``): retrying cannot help.
EXIT_BAD_INPUT = 2
# Set for the in-process run, restored after: SPARK_CONNECT_MODE_ENABLED is pyspark's own mark of a
# process that made a Connect session, inherited by its children (a classic spark-submit among them).
_CONNECT_ENV = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")


class SparkJobError(AirflowException):
    """The Spark job exited non-zero; the message ends with the tail of its output."""


class DatasetJobOperator(BaseOperator):
    """Run a PySpark ``application`` with ``application_args`` on connection ``conn_id``."""

    template_fields: Sequence[str] = ("application_args", "name")
    ui_color = "#e9f5ff"

    def __init__(
        self,
        *,
        application: str,
        application_args: Any = None,
        py_files: Sequence[str] = (),
        conn_id: str = "spark_default",
        name: str = "dataset_job",
        conf: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application = application
        self.application_args = application_args
        self.py_files = list(py_files)
        self.conn_id = conn_id
        self.name = name
        self.conf = dict(conf or {})
        self._hook: Any = None

    def execute(self, context: Any) -> None:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(self.conn_id)
        if connection.conn_type == "spark_connect":
            self._run_on_connect()
        else:
            self._spark_submit()

    def _spark_submit(self) -> None:
        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        self._hook = SparkSubmitHook(
            conf=self.conf,
            conn_id=self.conn_id,
            py_files=",".join(self.py_files) or None,
            name=self.name,
            application_args=[str(a) for a in self.application_args or []],
        )
        self._hook.submit(self.application)

    def _run_on_connect(self) -> None:
        from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook

        url = SparkConnectHook(self.conn_id).get_connection_url()
        args = [str(a) for a in self.application_args or []]
        self.log.info("Spark Connect %s: %s %s", url.split(";")[0], self.application, " ".join(args))
        # --py-files' job: the job's sibling modules importable (as the script's own folder is).
        extra_path = [os.path.dirname(os.path.abspath(p)) for p in self.py_files]
        tail: collections.deque = collections.deque(maxlen=20)
        out, err = _Tee(sys.stdout, tail), _Tee(sys.stderr, tail)
        saved = sys.argv, list(sys.path), {k: os.environ.get(k) for k in _CONNECT_ENV}
        sys.argv, sys.path[:0] = [self.application, *args], extra_path
        os.environ["SPARK_REMOTE"] = url
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                runpy.run_path(self.application, run_name="__main__")
            code = 0
        except SystemExit as exit_:  # the script's sys.exit(main())
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            out.flush()
            err.flush()
            sys.argv, sys.path[:] = saved[0], saved[1]
            for key, value in saved[2].items():  # pyspark also sets SPARK_CONNECT_MODE_ENABLED
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if code != 0:
            message = (
                f"{os.path.basename(self.application)} exited {code} on {url.split(';')[0]}:\n"
                + "\n".join(tail)
            )
            if code == EXIT_BAD_INPUT:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(message)  # bad input: a retry reads the same files
            raise SparkJobError(message)

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.on_kill()
            return
        # In-process Spark Connect job: stop what it runs on the server (the server outlives us).
        try:
            from pyspark.sql import SparkSession

            session = SparkSession.getActiveSession()
            if session is not None:
                session.interruptAll()
        except Exception as err:  # the task is being killed anyway
            self.log.warning("could not interrupt the Spark Connect job: %s", err)


class _Tee(io.TextIOBase):
    """Passes the job's output to ``stream`` (the task log, as before the job) and keeps its last
    lines in ``tail`` for the error message. It never logs itself: the task's log handler may
    write to the very stream this replaces."""

    def __init__(self, stream: Any, tail: collections.deque) -> None:
        self.stream, self.tail = stream, tail
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        self.tail.extend(line.rstrip() for line in lines)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.tail.append(self._partial.rstrip())
            self._partial = ""
        self.stream.flush()
