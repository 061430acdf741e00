"""The serving app: every spec's champion served the way its use case says (pipelines/usecases: score by id or
rank products), on Feast online features, behind API keys, with metrics and a request id on every response.

Entities without online features still get a score (every feature missing) with ``features_found: false``, so a
caller can tell a cold-start score from a real one. Routes: pipelines/serving/routes.py; one class per serving
kind: pipelines/serving/served.py.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

from pipelines.lake import Lake
from pipelines.serving.auth import ApiKeys, KeyFile
from pipelines.serving.candidates import OnlineCandidates
from pipelines.serving.checkout import CheckoutModel
from pipelines.serving.fast_path import ServingApp
from pipelines.serving.features import FeastFeatures, FeatureReader, FrameFeatures
from pipelines.serving.freshness import OnlineFreshness
from pipelines.serving.metrics import ServingMetrics
from pipelines.serving.model_loader import Refreshable, RefreshLoop
from pipelines.serving.prediction_log import PredictionLog, PredictionSink
from pipelines.serving.request_id import RequestIdMiddleware
from pipelines.serving.routes import ScoringRoutes, ServingState, build_router
from pipelines.serving.served import CandidateSource, RankedModel, ScoredModel, Served
from pipelines.serving.writer import PublishedRegistry, RemoteLog, WriterClient
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, load_specs
from pipelines.usecases import use_case

FOLLOW_SECONDS = 0.25  # how often a worker of mlctl serve stats the writer's registry file (at most)


def api_keys(settings: Settings) -> ApiKeys | KeyFile:
    """The configured API keys (reloaded when their file changes); none configured means no authentication
    (refused on the stack profile)."""
    if settings.serving_api_keys is None:
        if settings.profile == "stack":
            from pipelines.serving.auth import ApiKeysError

            raise ApiKeysError(
                "the stack profile serves only with API keys: set STOREFRONT_SERVING_API_KEYS to a 0600 keys file "
                "(create one with `mlctl serving-key add NAME --models MODEL`)"
            )
        return ApiKeys.disabled()
    return KeyFile(settings.serving_api_keys)


def create_app(
    settings: Settings,
    feature_reader: FeatureReader | None = None,
    specs: Mapping[str, ModelSpec] | None = None,
    candidate_source: CandidateSource | None = None,
    writer_dir: Path | None = None,
) -> ServingApp:
    """The serving app for every spec in ``settings.models_dir`` (or ``specs``). With ``writer_dir`` (a worker of
    ``mlctl serve``) the prediction log, the checkout's write-back and the registry reads of the refresh are the
    serving writer's (pipelines/serving/writer.py); without, this process does them in background threads."""
    source = FrameFeatures(settings, feature_reader) if feature_reader is not None else FeastFeatures(settings)
    all_specs = dict(specs) if specs is not None else load_specs(settings.models_dir)
    metrics = ServingMetrics()
    served: dict[str, Served] = {}
    for name, spec in all_specs.items():
        kind = use_case(spec.entity).serving
        if kind == "score":
            served[name] = ScoredModel(spec, settings, source, on_event=metrics.model_event)
        elif kind == "checkout":
            served[name] = CheckoutModel(spec, settings, source, on_event=metrics.model_event)
        elif kind == "rank":
            served[name] = RankedModel(
                spec, settings, source, candidate_source or OnlineCandidates(), on_event=metrics.model_event
            )
    holders = list(served.values())
    keys = api_keys(settings)
    freshness = OnlineFreshness(settings) if isinstance(source, FeastFeatures) else None
    writer = WriterClient(writer_dir) if writer_dir is not None else None
    for model in served.values():
        if isinstance(model, CheckoutModel):
            model.writer = writer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def refresh_all() -> None:
            for holder in holders:
                holder.refresh()

        await anyio.to_thread.run_sync(refresh_all)
        if freshness is not None:
            await anyio.to_thread.run_sync(freshness.refresh)
        # Everything loaded so far (Feast, MLflow, pandas, the models) lives as long as the worker: keep it out of
        # the collector's full passes, which otherwise pause a request for tens of milliseconds now and then.
        gc.collect()
        gc.freeze()
        followed: list[Refreshable] = [PublishedRegistry(writer.directory, served), writer] if writer else list(holders)
        refreshed = [*followed, keys] if isinstance(keys, KeyFile) else followed
        if freshness is not None:
            refreshed = [*refreshed, freshness]
        interval = settings.serving_refresh_seconds
        if writer is not None:
            # The writer publishes the registry every interval; stat'ing its file more often keeps a swap within
            # about one interval of the alias move.
            interval = min(interval, FOLLOW_SECONDS)
        loop = RefreshLoop(refreshed, interval)
        loop.start()
        log: PredictionSink | None = None
        if settings.serving_log_predictions:
            log = RemoteLog(writer) if writer is not None else PredictionLog(Lake(settings))
        for model in served.values():
            model.log = log
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(loop.stop)
            for model in served.values():
                model.close()
                model.log = None
            if isinstance(log, PredictionLog):
                await anyio.to_thread.run_sync(log.close)
            if writer is not None:  # what is still queued for the writer: it writes it before it exits
                await anyio.to_thread.run_sync(writer.close)

    # Docs are served by routes that check the API key like the scoring routes do.
    app = ServingApp(title="Storefront ML serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    state = ServingState(specs=all_specs, served=served, keys=keys, metrics=metrics, freshness=freshness)
    app.scoring = ScoringRoutes(state)
    app.include_router(build_router(state, app.scoring))
    app.add_middleware(RequestIdMiddleware)
    app.state.serving = state
    return app
