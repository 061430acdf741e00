"""What the stack needs besides its own processes: PostgreSQL databases, Redis, S3 credentials and buckets.

Everything here is idempotent: running ``mlctl stack up`` again creates nothing twice and deletes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from pipelines.settings import Settings


class StackError(RuntimeError):
    """The stack cannot start or answer as asked; the message says what to do."""


def _postgres_urls(settings: Settings) -> dict[str, str]:
    """The PostgreSQL databases of this profile, by purpose."""
    urls = {
        "Airflow metadata": settings.airflow_db_uri,
        "MLflow backend store": settings.mlflow_backend_store_uri,
        "MLflow auth database": settings.mlflow_auth_db_uri,
        "Feast registry": settings.feast_registry,
    }
    return {purpose: url for purpose, url in urls.items() if url.startswith("postgresql")}


def ensure_databases(settings: Settings) -> list[str]:
    """Create the profile's PostgreSQL databases that do not exist yet; return the names created."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    created = []
    for purpose, url in _postgres_urls(settings).items():
        parsed = make_url(url)
        if not parsed.database:
            raise StackError(f"the {purpose} URL {parsed.render_as_string()} names no database")
        try:
            conn = psycopg2.connect(
                host=parsed.host or "127.0.0.1",
                port=parsed.port or 5432,
                user=parsed.username or "postgres",
                password=parsed.password,
                dbname="postgres",
                connect_timeout=5,
            )
        except psycopg2.OperationalError as exc:
            raise StackError(
                f"PostgreSQL at {parsed.host}:{parsed.port or 5432} is not reachable for the {purpose} "
                f"({str(exc).strip()}); start it or point STOREFRONT_POSTGRES_URL at yours"
            ) from exc
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed.database)))
                    created.append(parsed.database)
        finally:
            conn.close()
    return created


def check_redis(settings: Settings) -> None:
    """Fail clearly when the Feast online store's Redis does not answer."""
    if settings.feast_online_store != "redis":
        return
    import redis

    url = settings.redis_url if "://" in settings.redis_url else f"redis://{settings.redis_url.split(',')[0]}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise StackError(
            f"Redis at {settings.redis_url} (Feast online store) does not answer: {exc}; "
            "start it or point STOREFRONT_REDIS_URL at yours"
        ) from exc


def check_celery_broker(settings: Settings) -> None:
    """Fail clearly when the CeleryExecutor's broker does not answer."""
    if settings.airflow_executor != "CeleryExecutor":
        return
    from kombu import Connection

    try:
        with Connection(settings.celery_broker_url.get_secret_value(), connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        raise StackError(
            f"the Celery broker (STOREFRONT_CELERY_BROKER_URL, host {conn.hostname}) does not answer: "
            f"{type(exc).__name__}; start RabbitMQ or point the setting at a running broker"
        ) from exc


def s3_credentials(settings: Settings) -> tuple[str, str]:
    """The S3 access key pair, from the environment (or .env) only."""
    if not (settings.aws_access_key_id and settings.aws_secret_access_key):
        raise StackError(
            "S3 credentials are missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment or "
            "in .env (`mlctl stack init` writes a .env with fresh ones for the loopback S3)"
        )
    return settings.aws_access_key_id.get_secret_value(), settings.aws_secret_access_key.get_secret_value()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file created 0600 (never readable by others, even for an instant)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def write_s3_identities(settings: Settings, path: Path) -> None:
    """SeaweedFS's identities file: one identity with the configured key pair (file mode 0600)."""
    key, secret = s3_credentials(settings)
    config = {
        "identities": [
            {
                "name": "storefront",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_private(path, json.dumps(config))


def s3_client(settings: Settings):
    """A boto3 S3 client for the configured endpoint and credentials."""
    import boto3

    key, secret = s3_credentials(settings)
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def buckets(settings: Settings) -> list[str]:
    """The buckets the profile writes to: the lake's, the MLflow server's artifacts' and Airflow's task logs'."""
    uris = [settings.lake_uri, settings.mlflow_artifacts_destination, settings.airflow_remote_log_folder]
    return sorted({urlparse(uri).netloc for uri in uris if uri.startswith("s3://")})


def ensure_buckets(settings: Settings) -> list[str]:
    """Create the profile's buckets that do not exist yet; return the names created."""
    from botocore.exceptions import ClientError

    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    created = []
    for name in buckets(settings):
        if name in existing:
            continue
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            raise StackError(f"cannot create bucket {name!r} at {settings.s3_endpoint_url or 'AWS'}: {exc}") from exc
        created.append(name)
    return created
