"""Run the serving app with uvicorn (``mlctl serve``): ``serving_workers`` processes on one port, each on a socket
of its own (pipelines/serving/workers.py), loading the champions and answering requests, and one writer process
beside them (pipelines/serving/writer.py) that writes the prediction log and the scored orders and reads the
registry for them; metrics are merged through a shared directory."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.serving import workers
from pipelines.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(request_id)s] %(name)s: %(message)s"
# The private directory of one `mlctl serve` (the writer's socket and registry file), for its workers.
WRITER_DIR_VARIABLE = "STOREFRONT_SERVING_WRITER_DIR"
WRITER_STOP_SECONDS = 60.0  # the writer's last parts and history writes after the workers exited

log = logging.getLogger(__name__)


def app_from_environment() -> Any:
    """The app factory each worker calls: settings from the environment, as ``mlctl`` reads them."""
    from pipelines.serving.app import create_app

    writer_dir = os.environ.get(WRITER_DIR_VARIABLE)
    return create_app(get_settings(), writer_dir=Path(writer_dir) if writer_dir else None)


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


@contextlib.contextmanager
def serving_writer(directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The writer process of a server on ``directory`` (same environment) while the block runs; on leaving, its
    stdin is closed and it writes what it holds, then exits (killed if it takes over WRITER_STOP_SECONDS)."""
    writer = subprocess.Popen([sys.executable, "-m", "pipelines.serving.writer", str(directory)], stdin=subprocess.PIPE)
    try:
        yield writer
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        try:
            writer.wait(WRITER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.error(
                "the serving writer did not stop within %g s; killed (rows it held are lost)", WRITER_STOP_SECONDS
            )
            writer.kill()
            writer.wait()


def run(settings: Settings) -> int:
    """Serve on settings.serving_host:serving_port until interrupted; returns the exit code (1: a worker failed at
    start-up). Raises PortUnavailable when the port cannot be listened on."""
    # Process state in a private temporary directory removed on exit (not STOREFRONT_HOME: the stack keeps no local
    # state there): the workers' metric files, the writer's socket and registry file.
    directory = Path(tempfile.mkdtemp(prefix="storefront-serving-"))
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[WRITER_DIR_VARIABLE] = str(directory)
    options = {
        "app": "pipelines.serving.server:app_from_environment",
        "factory": True,
        "host": settings.serving_host,
        "port": settings.serving_port,
        "log_config": log_config(),
        "access_log": False,
        # No client address is used: uvicorn need not rewrite it from X-Forwarded-For on every request.
        "proxy_headers": False,
    }
    try:
        with serving_writer(directory):
            return workers.serve(options, settings.serving_workers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
