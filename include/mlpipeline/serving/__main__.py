"""``python -m mlpipeline.serving``: run the model server (binds MLP_HOST:MLP_SERVING_PORT)."""

from __future__ import annotations

import logging

from mlpipeline.local.envfile import load_env_file
from mlpipeline.settings import PROJECT_ROOT, get_settings


def main() -> None:
    import uvicorn

    from mlpipeline.serving.app import create_app

    load_env_file(PROJECT_ROOT / ".env")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.serving_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
