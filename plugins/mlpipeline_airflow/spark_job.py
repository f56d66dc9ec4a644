"""The dataset job's operator: one standalone PySpark script, run where ``spark_default`` says.

* connection type ``spark`` (``local[2]``, ``spark://master:7077``, ``yarn``…): ``spark-submit``
  through the Spark provider's ``SparkSubmitHook``, exactly as ``SparkSubmitOperator`` does;
* connection type ``spark_connect`` (the embedded stack's warm Spark Connect server, or any
  ``sc://`` endpoint): the same script runs as a plain Python process with ``SPARK_REMOTE`` set,
  so it starts no JVM of its own.

The provider is imported only when the task runs: a DAG file that uses this operator parses
without loading it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

#: The job's exit code for bad input (``spark_jobs/build_dataset.py``): retrying cannot help.
EXIT_BAD_INPUT = 2


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
        self._process: subprocess.Popen | None = None
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
        # --py-files' job: the job's sibling modules importable by the client process.
        extra_path = [os.path.dirname(os.path.abspath(p)) for p in self.py_files]
        env = {
            **os.environ,
            "SPARK_REMOTE": url,
            "PYTHONPATH": os.pathsep.join([*extra_path, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        argv = [sys.executable, self.application, *[str(a) for a in self.application_args or []]]
        self.log.info("Spark Connect %s: %s", url.split(";")[0], " ".join(argv))
        tail: list[str] = []
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.log.info("%s", line.rstrip())
            tail = [*tail[-19:], line.rstrip()]
        code = self._process.wait()
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
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
        if self._hook is not None:
            self._hook.on_kill()
