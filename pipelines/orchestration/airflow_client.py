"""A small client of Airflow's public REST API (``/api/v2``), logged in as one user.

On the stack it talks HTTP to ``settings.airflow_api_url``. In the local profile no server runs, so it serves the
very same API application in-process over the local metadata DB: the requests, the authentication and the
authorization checks are exactly those a person going through the UI or REST would meet.
"""

from __future__ import annotations

import json
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Any

import httpx

from pipelines.orchestration.airflow_env import configure_airflow
from pipelines.settings import Settings


class AirflowAPIError(RuntimeError):
    """Airflow's API refused a request; the message carries its status and detail."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


class AirflowClient:
    """Airflow REST API as ``username``."""

    def __init__(self, settings: Settings, username: str | None = None) -> None:
        self.settings = settings
        self.username = username or settings.airflow_username
        if settings.airflow_api_url:
            self.http: httpx.Client = httpx.Client(base_url=settings.airflow_api_url.rstrip("/"), timeout=60)
        else:
            configure_airflow(settings)
            warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
            from airflow.api_fastapi.app import create_app
            from starlette.testclient import TestClient

            api = create_app("core")
            # One access-log line per request is noise in a CLI: drop that middleware from our in-process copy.
            api.user_middleware = [m for m in api.user_middleware if "AccessLog" not in getattr(m.cls, "__name__", "")]

            self.http = TestClient(api, base_url="http://airflow.local")
        self._login()

    def _login(self) -> None:
        password = _password_for(self.settings, self.username)
        resp = self.http.post("/auth/token", json={"username": self.username, "password": password})
        if resp.status_code >= 400:
            raise AirflowAPIError(f"login as {self.username!r} failed ({resp.status_code}): {resp.text}")
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, f"/api/v2{path}", **kwargs)
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
        params: dict[str, Any] = {"response_received": False, "limit": 100}
        if dag_id:
            params["dag_id"] = dag_id
        data = self.request("GET", "/dags/~/dagRuns/~/hitlDetails", params=params)
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
