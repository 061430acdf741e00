"""Airflow's task execution API for this process's in-process runs, built for the one API version its task SDK speaks.

``dag.test`` (every local run: ``mlctl run``, each lane of a backfill) talks to Airflow's execution API in-process
(``InProcessExecutionAPI``). Airflow builds that app with Cadwyn, which generates the routes of every API version
the server still supports (nine in Airflow 3.3): 4.3 s of CPU, alone, before the first task of every run process
starts (a gate-rejected training run on the e2e world: 21.9 s with it, 16.0 s with the app here). The client in
the same process is the task SDK of the same installation, which speaks the newest version, and for the newest
version Cadwyn's routes are the routes as written (its "head") minus the ones kept only for older clients. The app
here is assembled from exactly those routes, with Airflow's own lifespan, middlewares, error handlers and the
in-process authorization overrides of ``InProcessExecutionAPI.app``; a request for another version gets a 400
rather than being misread (tests/test_dags.py compares the routes with Airflow's own app).
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import Request  # resolved by FastAPI from this module's globals (the dependency below)
from fastapi.routing import APIRoute

# Cadwyn tags a route kept only for older clients with this (cadwyn.route_generation._DELETED_ROUTE_TAG).
_OLDER_VERSIONS_ONLY = "_CADWYN_DELETED_ROUTE"
_VERSION_HEADER = "airflow-api-version"


def _older_versions_only(route: Any) -> bool:
    return isinstance(route, APIRoute) and _OLDER_VERSIONS_ONLY in route.tags


def _in_process_app() -> Any:
    """Airflow's execution API app as ``create_task_execution_api_app`` assembles it, from the newest version's
    routes only, with what ``InProcessExecutionAPI.app`` adds: no JWT validator, the DAG bag, every request
    allowed (the caller is this process's own task runner)."""
    from uuid import UUID

    import attrs
    import svcs
    from airflow.api_fastapi.auth.tokens import JWTValidator
    from airflow.api_fastapi.common.dagbag import create_dag_bag
    from airflow.api_fastapi.common.exceptions import init_error_handlers
    from airflow.api_fastapi.execution_api import app as execution_app
    from airflow.api_fastapi.execution_api.datamodels.token import TIClaims, TIToken
    from airflow.api_fastapi.execution_api.routes import execution_api_router
    from airflow.api_fastapi.execution_api.routes.connections import has_connection_access
    from airflow.api_fastapi.execution_api.routes.variables import has_variable_access
    from airflow.api_fastapi.execution_api.routes.xcoms import has_xcom_access
    from airflow.api_fastapi.execution_api.security import _jwt_bearer
    from airflow.api_fastapi.execution_api.versions import bundle
    from airflow.configuration import conf
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import JSONResponse

    registry = svcs.Registry()
    registry.register_value(JWTValidator, None)
    app = FastAPI(
        title="Airflow Task Execution API (in-process, newest version)",
        lifespan=attrs.evolve(execution_app.lifespan, registry=registry),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(execution_app.CorrelationIdMiddleware)
    mode = conf.get("execution_api", "otel_trace_propagation", fallback="only-authenticated")
    execution_app._inject_trace_context_dep(execution_api_router.routes, mode)
    head = APIRouter()
    head.routes.extend(r for r in execution_api_router.routes if not _older_versions_only(r))
    app.include_router(head)  # the app's copies of the routes see its dependency overrides
    init_error_handlers(app)
    app.state.dag_bag = create_dag_bag()

    newest = str(bundle.versions[0].value)

    @app.middleware("http")
    async def newest_version_only(request: Request, call_next):  # type: ignore[no-untyped-def]
        asked = request.headers.get(_VERSION_HEADER)
        if asked is not None and asked != newest:
            content = {"detail": f"this in-process API serves version {newest} only, not {asked}"}
            return JSONResponse(status_code=400, content=content)
        return await call_next(request)

    async def always_allow(request: Request) -> TIToken:
        ti_id = UUID(request.path_params.get("task_instance_id", "00000000-0000-0000-0000-000000000000"))
        return TIToken(id=ti_id, claims=TIClaims(scope="execution"))

    for dependency in (_jwt_bearer, has_connection_access, has_variable_access, has_xcom_access):
        app.dependency_overrides[dependency] = always_allow
    return app


@functools.cache
def use_newest_version_app() -> None:
    """Make this process's ``InProcessExecutionAPI`` (dag.test's) serve the app above; idempotent."""
    from airflow.api_fastapi.execution_api import app as execution_app

    class NewestVersionExecutionAPI(execution_app.InProcessExecutionAPI):  # type: ignore[misc, name-defined]
        @functools.cached_property
        def app(self) -> Any:  # type: ignore[override]
            return _in_process_app()

    execution_app.InProcessExecutionAPI = NewestVersionExecutionAPI
