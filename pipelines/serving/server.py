"""Run the serving app with uvicorn (``mlctl serve``)."""

from __future__ import annotations

import uvicorn

from pipelines.serving.app import FeatureReader, create_app
from pipelines.settings import Settings


def run(settings: Settings, feature_reader: FeatureReader | None = None) -> None:
    """Serve on settings.serving_host:serving_port until interrupted (one worker: models live in memory)."""
    app = create_app(settings, feature_reader=feature_reader)
    uvicorn.run(app, host=settings.serving_host, port=settings.serving_port, log_level="info")
