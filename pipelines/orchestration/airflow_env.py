"""Airflow's configuration, derived from the settings object.

Airflow reads its configuration when it is first imported, so every entry point (CLI, tests) calls
:func:`configure_airflow` before importing anything from ``airflow``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from pipelines.settings import Settings

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def _jwt_secret(home: Path) -> str:
    """The API's token-signing key: generated once per Airflow home, kept out of the code."""
    path = home / "jwt_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(64))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def _ensure_passwords(path: Path, users: str) -> None:
    """Give every configured user a password in the SimpleAuthManager file (0600), so Airflow never prints one."""

    path.parent.mkdir(parents=True, exist_ok=True)
    passwords = json.loads(path.read_text()) if path.exists() else {}
    missing = [u.split(":")[0] for u in users.split(",") if u and u.split(":")[0] not in passwords]
    if not missing:
        return
    passwords.update({name: secrets.token_urlsafe(12) for name in missing})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(passwords) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


REMOTE_LOG_CONN_ID = "storefront_logs"


def _remote_logging(settings: Settings) -> dict[str, str]:
    """Task logs uploaded to S3 when each task ends (the local copy is then emptied); the UI reads them from S3.

    Not ``delete_local_logs``: the S3 handler deletes the log file's whole directory, which must not be trusted
    with a directory layout we do not control. The connection carries only the endpoint and region: boto3 takes
    the credentials from the environment.
    """
    if not settings.airflow_remote_log_folder:
        return {}
    extra = {"region_name": settings.s3_region}
    if settings.s3_endpoint_url:
        extra["endpoint_url"] = settings.s3_endpoint_url
    return {
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": settings.airflow_remote_log_folder,
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": REMOTE_LOG_CONN_ID,
        f"AIRFLOW_CONN_{REMOTE_LOG_CONN_ID.upper()}": json.dumps({"conn_type": "aws", "extra": extra}),
    }


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that point Airflow at this profile's metadata DB, DAGs and users."""
    assert settings.airflow_home is not None
    home = settings.airflow_home
    env = {
        **settings.environment(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_db_uri,
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": settings.airflow_users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or _jwt_secret(home),
        "MLFLOW_UV_AUTO_DETECT": "false",
        # Any MLflow call that does not get a URI passed explicitly still lands in this profile's store.
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "GIT_PYTHON_REFRESH": "quiet",
    }
    _ensure_passwords(home / "passwords.json", settings.airflow_users)
    env.update(_remote_logging(settings))
    if settings.airflow_api_url:
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = settings.airflow_api_url.rstrip("/") + "/execution/"
    return env


def _make_dirs(settings: Settings, env: dict[str, str]) -> None:
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    if settings.airflow_db_uri.startswith("sqlite:///"):
        Path(settings.airflow_db_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def configure_airflow(settings: Settings) -> dict[str, str]:
    """Export Airflow's environment into this process (before ``import airflow``) and return it."""
    env = airflow_environment(settings)
    _make_dirs(settings, env)
    os.environ.update(env)
    return env


def airflow_cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``airflow`` CLI of this environment with this profile's configuration (this process is untouched)."""
    env = {**os.environ, **airflow_environment(settings)}
    _make_dirs(settings, env)
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow), *args], env=env, check=check, capture_output=True, text=True)


def migrate_db(settings: Settings) -> None:
    """Create or upgrade the Airflow metadata DB (idempotent; a process importing all of Airflow: seconds), then
    record its heads (``record_heads``): the next caller need not check the migrations again."""
    result = airflow_cli(settings, "db", "migrate", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed for {settings.airflow_db_uri}:\n{result.stderr[-2000:]}")
    record_heads(settings)


# Once a DB is at this Airflow version's schema heads, they are kept in ``migrated.json`` beside it; later callers
# compare the DB's revision with that record (one query, without importing Airflow) instead of checking every
# migration script or starting `airflow db migrate`.
def _airflow_version() -> str:
    return importlib.metadata.version("apache-airflow")


def _db_heads(settings: Settings) -> set[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(settings.airflow_db_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}
    finally:
        engine.dispose()


def _heads_file(settings: Settings) -> Path:
    assert settings.airflow_home is not None
    return settings.airflow_home / "migrated.json"


def at_recorded_heads(settings: Settings) -> bool:
    """The metadata DB is at the schema heads recorded for this Airflow version (False when unknown)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        recorded = json.loads(_heads_file(settings).read_text())
        return recorded["airflow"] == _airflow_version() and set(recorded["heads"]) == _db_heads(settings)
    except (OSError, ValueError, KeyError, TypeError, SQLAlchemyError):
        return False


def no_db_yet(settings: Settings) -> bool:
    """The metadata DB is a SQLite file that does not exist yet (a new home): there is nothing to check, only to
    create. Unknown for a server's DB (False)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.airflow_db_uri)
    if url.get_backend_name() != "sqlite" or not url.database:
        return False
    path = Path(url.database)
    return not path.exists() or path.stat().st_size == 0


def record_heads(settings: Settings) -> None:
    """Note the DB's heads, now Airflow's own, for this Airflow version (atomically: a torn file is never read)."""
    path = _heads_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"airflow": _airflow_version(), "heads": sorted(_db_heads(settings))}))
    os.replace(tmp, path)
