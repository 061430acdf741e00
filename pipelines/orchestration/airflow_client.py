"""A small client of Airflow's public REST API (``/api/v2``), as the engineer account or a logged-in person.

On the stack it talks HTTP to ``settings.airflow_api_url``. In the local profile no server runs, so it serves
Airflow's API routes in-process over the local metadata DB (``local_api.py``: only the routes called here): the
requests, the authentication and the authorization checks are those a person going through the UI or REST meets.
"""

from __future__ import annotations

import json
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Any

import httpx

from pipelines.orchestration.airflow_env import configure_airflow
from pipelines.registry.identity import Identity, api_label, token_expiry
from pipelines.settings import Settings


class AirflowAPIError(RuntimeError):
    """Airflow's API refused a request; the message carries its status and detail."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AirflowUnreachable(AirflowAPIError):
    """Airflow's API did not answer at all: not started, stopped (one dead service stops the whole stack), or
    another address."""


def _send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise AirflowUnreachable(
            f"Airflow's API at {http.base_url} did not answer ({exc}); `mlctl stack status` says whether the stack "
            "runs, `mlctl stack down && mlctl stack up` restarts it"
        ) from exc


@dataclass
class PendingApproval:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    subject: str
    body: str
    assigned_users: list[str]

    def field(self, name: str) -> str | None:
        """Read a ``name: value`` line from the request body (the training DAG writes model and version)."""
        for line in self.body.splitlines():
            key, _, value = line.strip().strip("-* ").partition(":")
            if key.strip().lower() == name.lower() and value:
                return value.strip().strip("`")
        return None


def _password_for(settings: Settings, username: str) -> str:
    """The configured engineer (automation) account's password, and only that account's: a reviewer logs in."""
    if username != settings.airflow_username:
        raise AirflowAPIError(
            f"no password is read on behalf of {username!r}: only the engineer account "
            f"{settings.airflow_username!r} (STOREFRONT_AIRFLOW_USERNAME) logs in from configuration; "
            f"{username} logs in as themselves with `mlctl login --user {username}`"
        )
    if settings.airflow_password.get_secret_value():
        return settings.airflow_password.get_secret_value()
    assert settings.airflow_home is not None
    path = settings.airflow_home / "passwords.json"
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AirflowAPIError(
            f"no password for Airflow user {username!r}: set STOREFRONT_AIRFLOW_PASSWORD, or run "
            f"`mlctl demo`/`airflow db migrate` first so {path} is generated"
        ) from exc
    if username not in passwords:
        raise AirflowAPIError(
            f"Airflow has no user {username!r} (users: {', '.join(passwords)}); add it to STOREFRONT_AIRFLOW_USERS"
        )
    return passwords[username]


def _http(settings: Settings) -> httpx.Client:
    """HTTP to the stack's api-server, or the same API application served in-process (local profile)."""
    if settings.airflow_api_url:
        return httpx.Client(base_url=settings.airflow_api_url.rstrip("/"), timeout=60)
    configure_airflow(settings)
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
    from starlette.testclient import TestClient

    from pipelines.orchestration.local_api import local_api_app

    return TestClient(local_api_app(), base_url="http://airflow.local")


def issue_token(http: httpx.Client, username: str, password: str) -> str:
    """A JWT from Airflow's auth manager for ``username`` (the same login the UI does)."""
    resp = _send(http, "POST", "/auth/token", json={"username": username, "password": password})
    if resp.status_code >= 400:
        raise AirflowAPIError(f"login as {username!r} failed ({resp.status_code}): {resp.text}", resp.status_code)
    return resp.json()["access_token"]


def authenticated_user(http: httpx.Client, token: str | None = None) -> str:
    """Whom Airflow authenticates (``token``, else the client's own header): it checks signature and expiry."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    resp = _send(http, "GET", "/ui/auth/me", headers=headers)
    if resp.status_code >= 400:
        raise AirflowAPIError(f"Airflow refused the token ({resp.status_code}): {resp.text}", resp.status_code)
    return str(resp.json().get("username") or resp.json().get("id") or "")


def login(settings: Settings, username: str, password: str | None = None, token: str | None = None) -> Identity:
    """A personal identity: a token Airflow issued for ``username`` (from their password, or a token they
    pasted), checked with Airflow, which says whose it is (``/ui/auth/me``)."""
    http = _http(settings)
    if token is None:
        if not password:
            raise AirflowAPIError(f"no password given for {username!r}")
        token = issue_token(http, username, password)
    user = authenticated_user(http, token)
    if username and user != username:
        raise AirflowAPIError(f"the token belongs to {user!r}, not {username!r}")
    return Identity(user, token, token_expiry(token), api_label(settings))


class AirflowClient:
    """Airflow REST API as the engineer account (configured), or as a logged-in person's ``identity``."""

    def __init__(self, settings: Settings, identity: Identity | None = None) -> None:
        self.settings = settings
        self.username = identity.user if identity else settings.airflow_username
        self.http: httpx.Client = _http(settings)
        if identity is None:
            token = issue_token(self.http, self.username, _password_for(settings, self.username))
        else:
            token = identity.token
        self.http.headers["Authorization"] = f"Bearer {token}"

    def whoami(self) -> str:
        """The user Airflow authenticates this client as (it checks the token's signature and expiry)."""
        return authenticated_user(self.http)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = _send(self.http, method, f"/api/v2{path}", **kwargs)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise AirflowAPIError(f"{method} /api/v2{path} -> {resp.status_code}: {detail}", resp.status_code)
        return resp.json() if resp.content else None

    # -- runs ----------------------------------------------------------------------------------------
    def dag_runs(self, dag_id: str, limit: int = 5) -> list[dict]:
        data = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "-run_after"})
        return data["dag_runs"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def trigger(self, dag_id: str, logical_date: str, conf: dict | None = None) -> dict:
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def clear(self, dag_id: str, run_id: str) -> dict:
        """Clear every task of a run so the scheduler runs it again."""
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/clear"
        return self.request("POST", path, json={"dry_run": False})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path)["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list:
        """One attempt's log: a list of structured messages (dicts with ``event``, ``error_detail``...)."""
        run = urllib.parse.quote(run_id, safe="")
        path = f"/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/{try_number}"
        data = self.request("GET", path, params={"full_content": True}, headers={"Accept": "application/json"})
        content = (data or {}).get("content") or []
        return content if isinstance(content, list) else str(content).splitlines()

    def create_backfill(
        self, dag_id: str, start: str, end: str, max_active_runs: int = 2, reprocess: str = "failed"
    ) -> dict:
        return self.request("POST", "/backfills", json=backfill_payload(dag_id, start, end, max_active_runs, reprocess))

    def backfill(self, backfill_id: int) -> dict:
        return self.request("GET", f"/backfills/{backfill_id}")

    def runs_between(self, dag_id: str, start: str, end: str) -> list[dict]:
        params = {
            "logical_date_gte": start,
            "logical_date_lte": end,
            "limit": 1000,
            "order_by": "logical_date",
        }
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    # -- human in the loop ---------------------------------------------------------------------------
    def pending_approvals(self, dag_id: str | None = None) -> list[PendingApproval]:
        # The DAG is a path parameter of this route ("~": every DAG); as a query parameter Airflow ignores it.
        params: dict[str, Any] = {"response_received": False, "limit": 100}
        path = f"/dags/{urllib.parse.quote(dag_id or '~', safe='~')}/dagRuns/~/hitlDetails"
        data = self.request("GET", path, params=params)
        pending = []
        for item in data["hitl_details"]:
            if item.get("response_received"):
                continue
            ti = item["task_instance"]
            pending.append(
                PendingApproval(
                    dag_id=ti["dag_id"],
                    run_id=ti["dag_run_id"],
                    task_id=ti["task_id"],
                    map_index=ti.get("map_index", -1),
                    subject=item.get("subject") or "",
                    body=item.get("body") or "",
                    assigned_users=[u["id"] for u in item.get("assigned_users") or []],
                )
            )
        return pending

    def respond(self, request: PendingApproval, option: str, params_input: dict[str, Any]) -> dict:
        run = urllib.parse.quote(request.run_id, safe="")
        path = f"/dags/{request.dag_id}/dagRuns/{run}/taskInstances/{request.task_id}/{request.map_index}/hitlDetails"
        return self.request("PATCH", path, json={"chosen_options": [option], "params_input": params_input})


def backfill_payload(dag_id: str, start: str, end: str, max_active_runs: int, reprocess: str) -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        "from_date": start,
        "to_date": end,
        "max_active_runs": max_active_runs,
        "reprocess_behavior": reprocess,
        "run_backwards": False,
        "dag_run_conf": {},
    }
