"""The MLflow server's authentication on the stack profile: MLflow's basic-auth app with two service accounts.

``storefront-pipelines`` (Airflow tasks, ``mlctl`` commands) creates experiments and runs and registers models, sets
tags and moves aliases; ``storefront-serving`` (``mlctl serve``) only reads. Passwords are generated once and kept
in 0600 files under ``<stack_dir>/mlflow-auth/``; they reach processes through the environment, never arguments.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.settings import MLFLOW_PIPELINES_ACCOUNT, Settings
from pipelines.stack.resources import StackError, write_private

ADMIN = "admin"
PIPELINES = MLFLOW_PIPELINES_ACCOUNT
SERVING = "storefront-serving"
# Grants of each service account's role, on every resource of the type ("*"): the pipelines MANAGE registered
# models because a rollback deletes an alias (a delete needs MANAGE); they only EDIT experiments (runs, tags).
ROLE_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    PIPELINES: (("experiment", "EDIT"), ("registered_model", "MANAGE")),
    SERVING: (("experiment", "READ"), ("registered_model", "READ")),
}
# Users with no grant see nothing: a person gets an account and a role from an admin (docs/governance.md).
DEFAULT_PERMISSION = "NO_PERMISSIONS"
AUTH_CACHE_SECONDS = 600
WORKSPACE = "default"  # MLflow keeps every grant in this workspace while workspaces are off


@dataclass(frozen=True)
class Account:
    username: str
    password: str = field(repr=False)  # never in a log or a traceback's repr

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password


# Everything below lives in one 0700 directory, settings.mlflow_auth_dir (<stack_dir>/mlflow-auth/).


def config_path(directory: Path) -> Path:
    """The basic-auth app's ini (MLFLOW_AUTH_CONFIG_PATH), which holds the admin password."""
    return directory / "basic_auth.ini"


def password_path(directory: Path, username: str) -> Path:
    return directory / f"{username}.password"


def _private_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def _secret(path: Path) -> str:
    """The secret in ``path``, generated (0600, in a 0700 directory) the first time."""
    if not path.exists():
        _private_dir(path.parent)
        write_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def account(directory: Path, username: str) -> Account:
    """A service account with its password (generated on first use)."""
    return Account(username, _secret(password_path(directory, username)))


def flask_secret_key(directory: Path) -> str:
    """MLFLOW_FLASK_SERVER_SECRET_KEY: signs the UI's session and CSRF tokens; stable across restarts."""
    return _secret(directory / "flask_secret_key")


def _admin_password(path: Path) -> str:
    """The admin password of an existing ini (kept: the auth database already has it), else a new one."""
    if path.exists():
        parser = configparser.RawConfigParser()
        parser.read(path)
        if parser.has_option("mlflow", "admin_password"):
            return parser.get("mlflow", "admin_password")
    return secrets.token_urlsafe(24)


def write_auth_config(directory: Path, database_uri: str) -> Path:
    """Write the basic-auth ini (0600) with the auth database and the admin account; idempotent."""
    _private_dir(directory)
    if database_uri.startswith("sqlite:///"):
        # SQLite would create the file world-readable; it holds password hashes.
        db = Path(database_uri.removeprefix("sqlite:///"))
        if not db.exists():
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    path = config_path(directory)
    parser = configparser.RawConfigParser()
    parser["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        # MLflow reads the ini with interpolation on: a '%' (URL-encoded database password) must be doubled.
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": ADMIN,
        "admin_password": _admin_password(path),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # Each request otherwise re-hashes its password (PBKDF2): 0.5-1 s of CPU per request on a busy 2-core
        # machine (measured, tests/test_mlflow_auth.py). The cache is per worker; the stack runs one, so a password
        # change through the API takes effect at once.
        "auth_cache_ttl_seconds": str(AUTH_CACHE_SECONDS),
    }
    text = io.StringIO()
    parser.write(text)
    write_private(path, text.getvalue())
    return path


def admin_account(directory: Path) -> Account:
    path = config_path(directory)
    if not path.exists():
        raise StackError(f"{path} does not exist: `mlctl stack up` writes it before starting the MLflow server")
    return Account(ADMIN, _admin_password(path))


def client_environment(directory: Path, username: str) -> dict[str, str]:
    """MLflow's client identity variables for one service account."""
    found = account(directory, username)
    return {"MLFLOW_TRACKING_USERNAME": found.username, "MLFLOW_TRACKING_PASSWORD": found.password}


def _write_exports(path: Path, env: dict[str, str], unset: tuple[str, ...] = ()) -> None:
    """``export`` lines (mode 0600) that a Procfile entry sources before ``exec``: secrets stay off command lines."""
    lines = [f"unset {' '.join(unset)}\n"] if unset else []
    lines += [f"export {name}={shlex.quote(value)}\n" for name, value in env.items()]
    write_private(path, "".join(lines))


def write_server_env(settings: Settings, path: Path) -> None:
    """What `mlflow server --app-name basic-auth` reads besides its arguments: the backend store's URL (with the
    database password), the auth ini's path and the session-signing key. The server is no client of itself, so
    the pipelines' identity the stack's environment carries is dropped."""
    directory = settings.mlflow_auth_dir
    env = {
        "MLFLOW_BACKEND_STORE_URI": settings.mlflow_backend_store_uri,
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(directory, settings.mlflow_auth_db_uri)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key(directory),
    }
    _write_exports(path, env, unset=("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))


def write_serving_env(settings: Settings, path: Path) -> None:
    """The serving process's MLflow identity: the read-only account, replacing the pipelines' one."""
    _write_exports(path, client_environment(settings.mlflow_auth_dir, SERVING))


class _Admin:
    """The few calls of MLflow's basic-auth REST API that set up the service accounts, made as the admin."""

    def __init__(self, tracking_uri: str, admin: Account) -> None:
        self._http = httpx.Client(base_url=tracking_uri.rstrip("/"), auth=admin.auth, timeout=30.0)

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: object) -> dict:
        resp = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        if resp.status_code == 401:
            raise StackError(
                f"the MLflow server at {self._http.base_url} refuses the admin password of the auth ini; its auth "
                "database was made with another one (restore the ini, or point it at a fresh database)"
            )
        if resp.status_code >= 400:
            raise StackError(f"MLflow auth API {method} {path} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else {}

    def user_exists(self, username: str) -> bool:
        resp = self._http.get("/api/2.0/mlflow/users/get", params={"username": username})
        if resp.status_code == 404 or (resp.status_code == 400 and "RESOURCE_DOES_NOT_EXIST" in resp.text):
            return False
        if resp.status_code == 401:
            self.call("GET", "/api/2.0/mlflow/users/get", params={"username": username})  # raises the clear error
        resp.raise_for_status()
        return True


def ensure_service_accounts(tracking_uri: str, admin: Account, accounts: list[Account]) -> list[str]:
    """Create (or re-key) each service account and give it its role; return the accounts created. Idempotent."""
    created = []
    with _Admin(tracking_uri, admin) as api:
        for user in accounts:
            if api.user_exists(user.username):
                # The password given is the truth: a changed one re-keys the account.
                body = {"username": user.username, "password": user.password}
                api.call("PATCH", "/api/2.0/mlflow/users/update-password", json=body)
            else:
                body = {"username": user.username, "password": user.password}
                api.call("POST", "/api/2.0/mlflow/users/create", json=body)
                created.append(user.username)
            _ensure_role(api, user.username, ROLE_GRANTS[user.username])
    return created


def ensure_accounts(settings: Settings) -> list[str]:
    """The loopback stack's service accounts, with the passwords of their 0600 files (made on first use)."""
    directory = settings.mlflow_auth_dir
    accounts = [account(directory, username) for username in ROLE_GRANTS]
    return ensure_service_accounts(settings.mlflow_tracking_uri, admin_account(directory), accounts)


# compose and Kubernetes: the passwords come from the environment (a Secret), not from files of a stack dir.
ACCOUNT_PASSWORD_VARIABLES = {
    PIPELINES: "STOREFRONT_MLFLOW_PIPELINES_PASSWORD",
    SERVING: "STOREFRONT_MLFLOW_SERVING_PASSWORD",
}


def accounts_from_environment(environ: dict[str, str]) -> tuple[Account, list[Account]]:
    """The admin (MLflow's own MLFLOW_AUTH_ADMIN_PASSWORD) and the service accounts, from environment variables."""
    names = ["MLFLOW_AUTH_ADMIN_PASSWORD", *ACCOUNT_PASSWORD_VARIABLES.values()]
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise StackError(f"set {', '.join(missing)} (from a Secret or infra/.env) to create the MLflow accounts")
    admin = Account(environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or ADMIN, environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    return admin, [Account(user, environ[variable]) for user, variable in ACCOUNT_PASSWORD_VARIABLES.items()]


def main() -> None:
    """``python -m pipelines.stack.mlflow_auth``: the one-shot job of compose and Kubernetes that creates the
    service accounts on the settings' MLflow server (safe to run again)."""
    import sys

    from pipelines.settings import get_settings

    settings = get_settings()
    try:
        admin, accounts = accounts_from_environment(dict(os.environ))
        created = ensure_service_accounts(settings.mlflow_tracking_uri, admin, accounts)
    except (StackError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print(f"MLflow accounts at {settings.mlflow_tracking_uri}: {', '.join(ROLE_GRANTS)} (created: {created or 'none'})")


def _ensure_role(api: _Admin, name: str, grants: tuple[tuple[str, str], ...]) -> None:
    """A role named like the account, with exactly ``grants`` on every resource of each type, assigned to it."""
    roles = api.call("GET", "/api/3.0/mlflow/roles/list", params={"workspace": WORKSPACE})["roles"]
    role = next((r for r in roles if r["name"] == name), None)
    if role is None:
        body = {"workspace": WORKSPACE, "name": name, "description": f"Storefront service account {name}"}
        role = api.call("POST", "/api/3.0/mlflow/roles/create", json=body)["role"]
    role_id = int(role["id"])
    listed = api.call("GET", "/api/3.0/mlflow/roles/permissions/list", params={"role_id": str(role_id)})
    have = {(p["resource_type"], p["resource_pattern"]): p for p in listed["role_permissions"]}
    for resource_type, permission in grants:
        current = have.get((resource_type, "*"))
        if current is None:
            body = {"role_id": role_id, "resource_type": resource_type, "resource_pattern": "*"}
            api.call("POST", "/api/3.0/mlflow/roles/permissions/add", json=body | {"permission": permission})
        elif current["permission"] != permission:
            body = {"role_permission_id": int(current["id"]), "permission": permission}
            api.call("PATCH", "/api/3.0/mlflow/roles/permissions/update", json=body)
    assigned = api.call("GET", "/api/3.0/mlflow/users/roles/list", params={"username": name})["roles"]
    if not any(int(r["id"]) == role_id for r in assigned):
        api.call("POST", "/api/3.0/mlflow/roles/assign", json={"username": name, "role_id": role_id})


if __name__ == "__main__":
    main()
