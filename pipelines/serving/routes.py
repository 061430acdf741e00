"""The HTTP routes of the serving app. Scoring routes read their body by hand and answer JSON directly: one error
path for every route (status, a short message, the request id), metrics per model and version, API keys."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from pipelines.serving import request_id
from pipelines.serving.auth import ApiKeys, Forbidden, KeyFile, Unauthorized
from pipelines.serving.features import FeaturesUnavailable
from pipelines.serving.freshness import OnlineFreshness
from pipelines.serving.metrics import ServingMetrics
from pipelines.serving.requests import BadRequest, json_object
from pipelines.serving.schemas import (
    HealthResponse,
    ModelHealth,
    ModelInfo,
    ModelsResponse,
    RefusalInfo,
    RolloutInfo,
    ViewFreshness,
    api_docs,
)
from pipelines.serving.served import NotServable, Served
from pipelines.specs import ModelSpec

log = logging.getLogger("pipelines.serving")


# The scoring routes (POST /v1/models/{model}/ROUTE) and whether each serves in a worker thread (a ranking reads
# a user's candidates and every candidate's features from the online store: off the event loop).
SCORING_ROUTES = {"predict": False, "rank": True, "score": False}


@dataclass
class ServingState:
    specs: dict[str, ModelSpec]
    served: dict[str, Served]
    keys: ApiKeys | KeyFile
    metrics: ServingMetrics
    freshness: OnlineFreshness | None = None  # None when features do not come from the online store


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    return _json({"detail": message, "request_id": request_id.current.get()}, status)


class ScoringRoutes:
    """The one handler of the scoring routes (POST /v1/models/{model}/ROUTE): API key, model lookup, body, the served
    model's answer, errors as short JSON bodies with the request id, metrics. FastAPI's routes and the fast path
    (pipelines/serving/fast_path.py) both call it."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def _lookup(self, model: str, route: str) -> Served:
        state = self.state
        served = state.served.get(model)
        if served is not None and served.route == route:
            return served
        spec = state.specs.get(model)
        if spec is None:
            raise _Refused(404, f"unknown model {model[:64]!r}; known models: {sorted(state.specs)}")
        raise _Refused(
            404,
            f"model {model!r} ({spec.objective}, entity {spec.entity}) is not served by /{route}"
            + (f"; it is served by /{served.route}" if served is not None else ""),
        )

    async def __call__(self, authorization: str | None, body: bytes, model: str, route: str) -> Response:
        state = self.state
        started = time.perf_counter()
        label, version = "unknown", "none"
        try:
            key = state.keys.authenticate(authorization)
            served = self._lookup(model, route)
            label = model
            if key is not None and not key.allows(model):
                raise Forbidden(f"API key {key.name!r} may not call model {model!r}")
            payload = json_object(body)
            in_thread = SCORING_ROUTES[route]
            outcome = await anyio.to_thread.run_sync(served.serve, payload) if in_thread else served.serve(payload)
            version = outcome.version
            response = _json(outcome.body)
            state.metrics.entities.labels(model, version).inc(outcome.entities)
            if outcome.missing:
                state.metrics.missing.labels(model, version).inc(outcome.missing)
            if outcome.unlogged:
                state.metrics.unlogged.labels(model).inc(outcome.unlogged)
        except (Unauthorized, Forbidden) as exc:
            status = 401 if isinstance(exc, Unauthorized) else 403
            state.metrics.auth_failures.labels(str(status)).inc()
            response = error_response(status, str(exc))
            if status == 401:
                response.headers["www-authenticate"] = "Bearer"
        except (_Refused, BadRequest) as exc:
            response = error_response(exc.status, str(exc))
        except NotServable as exc:
            response = error_response(503, str(exc))
        except FeaturesUnavailable as exc:
            log.error("%s: %s", exc, exc.__cause__, exc_info=exc.__cause__)
            cause = f"the server's log has the cause (request {request_id.current.get()})"
            response = error_response(503, f"{exc}; {cause}")
        except Exception:  # an error no check expected: a short 500 (no server detail), counted like the others
            log.exception("unexpected error serving %s/%s", model[:64], route)
            response = error_response(500, "internal server error")
        state.metrics.requests.labels(label, version, route, str(response.status_code)).inc()
        state.metrics.latency.labels(label, version, route).observe(time.perf_counter() - started)
        return response


def build_router(state: ServingState, handle: ScoringRoutes) -> APIRouter:
    router = APIRouter()
    docs = api_docs()

    # Under the app these three are answered by pipelines/serving/fast_path.py, which calls the same handler without
    # Starlette's routing layers; the routes give their documentation and the same answers to any other caller.
    @router.post("/v1/models/{model}/predict", openapi_extra=docs["predict"], response_model=None)
    async def predict(model: str, request: Request) -> Response:
        """Score users with the model's champion: ``{"user_ids": [...]}`` (1..1000 ids)."""
        return await handle(request.headers.get("authorization"), await request.body(), model, "predict")

    @router.post("/v1/models/{model}/rank", openapi_extra=docs["rank"], response_model=None)
    async def rank(model: str, request: Request) -> Response:
        """Rank candidate products for a user with the model's champion."""
        return await handle(request.headers.get("authorization"), await request.body(), model, "rank")

    @router.post("/v1/models/{model}/score", openapi_extra=docs["score"], response_model=None)
    async def score(model: str, request: Request) -> Response:
        """Score an order at checkout, before it exists: its account, device, IP, value, source, browser, time."""
        return await handle(request.headers.get("authorization"), await request.body(), model, "score")

    def guarded(request: Request) -> Response | None:
        try:
            state.keys.authenticate(request.headers.get("authorization"))
        except Unauthorized as exc:
            state.metrics.auth_failures.labels("401").inc()
            response = error_response(401, str(exc))
            response.headers["www-authenticate"] = "Bearer"
            return response
        return None

    @router.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        models = {}
        for name, served in state.served.items():
            st = served.holder.status()
            refusal = st.last_refusal
            arms = served.arms()
            models[name] = ModelHealth(
                version=st.version,
                rollout=RolloutInfo(name=arms[0].name, mode=arms[0].mode, share=arms[0].share, version=arms[1].version)
                if arms
                else None,
                loaded_at=st.loaded_at,
                champion_version=st.champion_version,
                last_checked=st.last_checked,
                last_refusal=RefusalInfo(version=refusal.version, reason=refusal.reason, at=refusal.at)
                if refusal
                else None,
                last_error=st.last_error,
                finding=st.finding,
            )
        ok = all(m.version is not None and m.finding is None for m in models.values())
        lag = state.freshness.current() if state.freshness is not None else None
        views = (
            [
                ViewFreshness(view=v.view, built=v.built, materialized_through=v.materialized_through, behind=v.behind)
                for v in lag.views
            ]
            if lag is not None
            else None
        )
        ok = ok and not any(v.behind for v in views or [])
        return HealthResponse(
            status="ok" if ok else "degraded",
            auth=state.keys.enabled,
            models=models,
            online_views=views,
            online_error=lag.error if lag is not None else None,
        )

    @router.get("/v1/models", response_model=ModelsResponse)
    def list_models(request: Request) -> Any:
        if (refused := guarded(request)) is not None:
            return refused
        infos = []
        for name, spec in sorted(state.specs.items()):
            served = state.served.get(name)
            loaded = served.holder.current() if served is not None else None
            infos.append(
                ModelInfo(
                    name=name,
                    objective=spec.objective,
                    feature_service=spec.feature_service,
                    served=served is not None,
                    route=f"/v1/models/{name}/{served.route}" if served is not None else None,
                    version=loaded.version if loaded else None,
                    features=list(loaded.feature_names) if loaded else [],
                )
            )
        return ModelsResponse(models=infos)

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        content, media_type = state.metrics.exposition()
        return Response(content, media_type=media_type)

    @router.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> Response:
        if (refused := guarded(request)) is not None:
            return refused
        return JSONResponse(request.app.openapi())

    @router.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> Response:
        if (refused := guarded(request)) is not None:
            return refused
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Storefront ML serving")

    return router
