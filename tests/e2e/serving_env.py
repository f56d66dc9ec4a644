"""Shared set-up of the e2e tests that need settings for one module and the real model server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ports import free_port


@contextlib.contextmanager
def settings_environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``MLP_*`` variables for a whole module (cached settings reloaded), restore them after."""
    from mlpipeline.pipeline_config import get_pipeline_config
    from mlpipeline.settings import get_settings

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    get_pipeline_config.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        get_pipeline_config.cache_clear()


def module_settings(root: Path, admin_token: str, **extra: str) -> tuple[int, dict[str, str]]:
    """A free server port and the ``MLP_*`` values of a module with its own lake, state and
    pipeline file (``root/pipeline.yaml``), the model server on that port (+ ``extra``)."""
    port = free_port()
    values = {
        "MLP_LAKE_URI": f"file://{root / 'lake'}",
        "MLP_PIPELINE_CONFIG": str(root / "pipeline.yaml"),
        "MLP_STATE_DIR": str(root / "state"),
        "MLP_SERVING_PORT": str(port),
        "MLP_SERVING_ADMIN_TOKEN": admin_token,
        **extra,
    }
    return port, values


@contextlib.contextmanager
def model_server(root: Path, port: int, **env: str) -> Iterator[str]:
    """``python -m mlpipeline.serving`` with the current settings (+ ``env``); yields its URL."""
    import httpx

    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlpipeline.serving"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
