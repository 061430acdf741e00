"""Airflow's REST API served in this process (local profile), with only the endpoints the platform calls.

Airflow's ``create_app`` builds every one of its ~600 routes, and importing its public routes package imports and
assembles all of them: about 5 s of every local ``mlctl`` command that talks to Airflow (``status``, ``approve``,
``approvals``, ``login``...). The app here is assembled from Airflow's own route modules, auth manager, error
handlers and middlewares, the same way ``create_app`` assembles them, but only from the modules of the routes in
``ROUTES``: the requests, authentication and authorization checks are Airflow's own. On the stack the client
talks HTTP to the real api-server instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

# Module -> the routers it defines that the platform calls (prefixes are Airflow's; see airflow_client.py).
ROUTES: dict[str, tuple[str, ...]] = {
    "airflow.api_fastapi.core_api.routes.public.dag_run": ("dag_run_router", "dag_run_at_dag_router"),
    "airflow.api_fastapi.core_api.routes.public.task_instances": ("task_instances_router",),
    "airflow.api_fastapi.core_api.routes.public.log": ("task_instances_log_router",),
    "airflow.api_fastapi.core_api.routes.public.backfills": ("backfills_router",),
    "airflow.api_fastapi.core_api.routes.public.hitl": ("task_instances_hitl_router",),
}
UI_ROUTES: dict[str, tuple[str, ...]] = {"airflow.api_fastapi.core_api.routes.ui.auth": ("auth_router",)}


@contextlib.contextmanager
def _package_without_init(package: str) -> Iterator[None]:
    """Let submodules of ``package`` be imported without running the package's ``__init__`` (Airflow's route
    packages assemble every router there). A package already imported is left as it is; the stand-in is removed
    afterwards, so a later ``import package`` runs the real ``__init__`` (reusing the submodules imported here)."""
    if package in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{package} is not a package")
    sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        yield
    finally:
        sys.modules.pop(package, None)


def _routers(routes: dict[str, tuple[str, ...]]) -> list[Any]:
    found = []
    for module_name, names in routes.items():
        with _package_without_init(module_name.rpartition(".")[0]):
            module = importlib.import_module(module_name)
        found.extend(getattr(module, name) for name in names)
    return found


def local_api_app():
    """Airflow's API app with the routes of ``ROUTES`` under ``/api/v2``, ``/ui/auth`` and the auth manager's
    own app under ``/auth`` (login: ``/auth/token``)."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.common.dagbag import create_dag_bag
    from airflow.api_fastapi.common.exceptions import init_error_handlers
    from airflow.api_fastapi.core_api.app import init_middlewares
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI

    app = FastAPI(title="Airflow API (in-process, local profile)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dag_bag = create_dag_bag()
    init_auth_manager(app)
    # Authentication on every route, as Airflow's own public and UI routers require it (each route adds its own
    # authorization check). Included straight into the app: every level of routers copies every route.
    authenticated = [Depends(get_user)]
    for router in _routers(UI_ROUTES):
        app.include_router(router, prefix="/ui", include_in_schema=False, dependencies=authenticated)
    for router in _routers(ROUTES):
        app.include_router(router, prefix="/api/v2", dependencies=authenticated)
    init_error_handlers(app)
    init_middlewares(app)
    return app
