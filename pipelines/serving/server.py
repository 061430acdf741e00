"""Run the serving app with uvicorn (``mlctl serve``): ``serving_workers`` processes on one port, each loading the
champions and following the alias on its own; their metrics are merged through a shared directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import uvicorn

from pipelines.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(request_id)s] %(name)s: %(message)s"


def app_from_environment() -> Any:
    """The app factory each worker calls: settings from the environment, as ``mlctl`` reads them."""
    from pipelines.serving.app import create_app

    return create_app(get_settings())


def log_config() -> dict[str, Any]:
    """uvicorn's logging with the request id on every line; no per-request access line (metrics count those)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "pipelines.serving.request_id.RequestIdFilter"}},
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "INFO"},
        # Feast logs every registry refresh at INFO.
        "loggers": {"uvicorn.access": {"level": "WARNING"}, "feast": {"level": "WARNING"}},
    }


def run(settings: Settings) -> None:
    """Serve on settings.serving_host:serving_port until interrupted."""
    # The workers' metric files: process state, in a private temporary directory removed on exit.
    metrics_dir = tempfile.mkdtemp(prefix="storefront-serving-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "pipelines.serving.server:app_from_environment",
            factory=True,
            host=settings.serving_host,
            port=settings.serving_port,
            workers=settings.serving_workers,
            log_config=log_config(),
            access_log=False,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
