"""The processes of the loopback stack, their command lines and environment, and how to tell each is healthy."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipelines.orchestration.airflow_env import airflow_environment
from pipelines.settings import Settings
from pipelines.stack.mlflow_auth import PIPELINES, client_environment
from pipelines.stack.ports import host_port
from pipelines.stack.resources import s3_credentials

AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer")


MLFLOW_ENV = "mlflow.env"
SERVING_ENV = "serving.env"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    url: str = ""
    # A 0600 file of `export NAME=value` lines the shell reads before exec: secrets stay off command lines.
    env_file: Path | None = None

    def procfile_line(self, logs: Path) -> str:
        # Each service logs to its own file; honcho's own output only says who started and stopped.
        source = f". {shlex.quote(str(self.env_file))} && " if self.env_file else ""
        return f"{self.name}: {source}exec {shlex.join(self.argv)} >> {shlex.quote(str(logs / self.name))}.log 2>&1"


@dataclass(frozen=True)
class InternalPorts:
    """Ports nobody outside the stack talks to, picked free at start-up (SeaweedFS internals, log servers)."""

    weed: dict[str, int]
    worker_log_server: int
    trigger_log_server: int

    @classmethod
    def pick(cls, ports: list[int]) -> InternalPorts:
        names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "s3.port.iceberg",
            "admin.port",
            "admin.port.grpc",
            "metricsPort",
        ]
        weed = dict(zip(names, ports, strict=False))
        return cls(weed=weed, worker_log_server=ports[-2], trigger_log_server=ports[-1])

    COUNT = 13


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def services(settings: Settings, internal: InternalPorts) -> list[Service]:
    """Every process of the stack, in start order."""
    assert settings.stack_dir is not None
    found: list[Service] = []
    if settings.s3_endpoint_url:
        host, port = host_port(settings.s3_endpoint_url, 8333)
        weed = [
            _bin("weed"),
            "mini",
            f"-dir={settings.stack_dir / 's3-data'}",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-s3.port={port}",
            f"-s3.config={settings.stack_dir / 's3-identities.json'}",
            "-webdav=false",
            "-admin.ui=false",
            *(f"-{flag}={value}" for flag, value in internal.weed.items()),
        ]
        found.append(Service("s3", weed, settings.s3_endpoint_url))
    host, port = host_port(settings.mlflow_tracking_uri, 5000)
    # The backend store's URL holds the database password, the auth app's ini the admin's: both reach the server
    # through a 0600 file of exports (mlflow_auth.write_server_env), never as an argument `ps` shows.
    mlflow = [
        _bin("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--artifacts-destination",
        settings.mlflow_artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    found.append(Service("mlflow", mlflow, settings.mlflow_tracking_uri, settings.stack_dir / MLFLOW_ENV))
    host, port = host_port(settings.airflow_api_url, 8080)
    found.append(
        Service(
            "api-server",
            [_bin("airflow"), "api-server", "--host", host, "--port", str(port), "--workers", "1"],
            settings.airflow_api_url,
        )
    )
    found += [Service(name, [_bin("airflow"), name]) for name in AIRFLOW_COMPONENTS]
    if settings.airflow_executor == "CeleryExecutor":
        # The Celery worker's pool forks run the tasks (pipelines/stack/preload.py): it imports the steps' libraries
        # once, so no task process imports them again. (Not the LocalExecutor's scheduler: a SIGKILLed preloaded
        # scheduler's stack did not run the rerun in tests/test_faults.py; not understood yet.)
        preloaded = [sys.executable, "-m", "pipelines.stack.preload", _bin("airflow")]
        queue = settings.celery_queue
        worker = [*preloaded, "celery", "worker", "--queues", queue, "--celery-hostname", f"{queue}@%h"]
        found.append(Service("celery-worker", [*worker, "--concurrency", str(settings.celery_worker_concurrency)]))
    found += _dask_services(settings)
    # Serving reads the registry with the read-only MLflow account (mlflow_auth.write_serving_env).
    serving_url = f"http://{settings.serving_host}:{settings.serving_port}"
    found.append(Service("serving", [_bin("mlctl"), "serve"], serving_url, settings.stack_dir / SERVING_ENV))
    return found


def runs_own_dask(settings: Settings) -> bool:
    """The stack starts a Dask scheduler and workers when computation is on Dask at a loopback address."""
    return settings.compute == "dask" and host_port(settings.dask_scheduler, 8786)[0] in {"127.0.0.1", "localhost"}


def _dask_services(settings: Settings) -> list[Service]:
    if not runs_own_dask(settings):
        return []
    assert settings.stack_dir is not None
    host, port = host_port(settings.dask_scheduler, 8786)
    scheduler = [_bin("dask"), "scheduler", "--host", host, "--port", str(port), "--dashboard-address", f"{host}:0"]
    worker = [
        _bin("dask"),
        "worker",
        settings.dask_scheduler,
        "--host",
        host,
        "--nworkers",
        str(settings.dask_workers),
        "--nthreads",
        "1",
        "--memory-limit",
        settings.dask_worker_memory,
        "--no-dashboard",
        "--local-directory",
        str(settings.stack_dir / "dask"),
    ]
    return [Service("dask-scheduler", scheduler), Service("dask-workers", worker)]


def serving_keys_path(settings: Settings) -> Path:
    """The serving app's API keys file: the configured one, else the stack's own (made by ``stack up``)."""
    assert settings.stack_dir is not None
    return settings.serving_api_keys or settings.stack_dir / "serving" / "api_keys.yaml"


def environment(settings: Settings, internal: InternalPorts, stack_id: str) -> dict[str, str]:
    """One environment for every process, so Airflow tasks, MLflow and serving agree on every store."""
    key, secret = s3_credentials(settings)
    env = {
        **airflow_environment(settings),
        "AIRFLOW__CORE__EXECUTOR": settings.airflow_executor,
        "AIRFLOW__API__BASE_URL": settings.airflow_api_url,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # A scheduler that died leaves its tasks `running`; the restarted one resets them at its first orphan check
        # after the dead one's heartbeat is 30 s old. Airflow checks every 300 s: a killed scheduler's day then
        # waited 5 min after `stack up` (tests/test_faults.py); at 60 s the rerun still waited most of a minute.
        # Every 10 s costs one small query.
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(internal.worker_log_server),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(internal.trigger_log_server),
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": settings.s3_region,
        # The MLflow server alone reads and writes artifacts in S3 (clients go through it).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Dask's workers sample their own threads every 10 ms for the dashboard's profile (which the stack does not
        # serve): an idle worker used 2.0 s of CPU a minute with it, 1.1 s without (2-core machine, 2026-12-07).
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        # Nor check their event loop every 20 ms, their own CPU and memory every 0.5 s and the memory limit every
        # 0.1 s: an idle scheduler and two workers used 1.14 s of CPU a minute so, 0.36 s with these (2026-12-07).
        "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "500ms",
        "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
        "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "250ms",
        # Every client of the MLflow server is the pipelines' service account unless its Procfile entry says
        # otherwise (serving: the read-only account; the server itself: nobody).
        **client_environment(settings.mlflow_auth_dir, PIPELINES),
        "STOREFRONT_STACK_ID": stack_id,
        "STOREFRONT_SERVING_API_KEYS": str(serving_keys_path(settings)),
    }
    if settings.airflow_executor == "CeleryExecutor":
        env |= {
            "AIRFLOW__CELERY__BROKER_URL": settings.celery_broker_url.get_secret_value(),
            # Celery's database result backend on the Airflow metadata DB (SQLAlchemy URL behind "db+").
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{settings.airflow_db_uri}",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": settings.celery_queue,
        }
    if settings.s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        env["AWS_ENDPOINT_URL_S3"] = settings.s3_endpoint_url
    return env


def _get(url: str, timeout: float = 3.0) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def health(settings: Settings) -> dict[str, str | None]:
    """Each service's problem, or None when it is healthy."""
    found: dict[str, str | None] = {}
    if settings.s3_endpoint_url:
        resp = _get(settings.s3_endpoint_url)
        found["s3"] = None if resp is not None else f"no answer at {settings.s3_endpoint_url}"
    resp = _get(f"{settings.mlflow_tracking_uri.rstrip('/')}/health")
    found["mlflow"] = None if resp is not None and resp.status_code == 200 else "no answer at /health"
    resp = _get(f"{settings.airflow_api_url.rstrip('/')}/api/v2/monitor/health")
    if resp is None or resp.status_code != 200:
        found["api-server"] = "no answer at /api/v2/monitor/health"
        found.update({name: "unknown (api-server down)" for name in AIRFLOW_COMPONENTS})
    else:
        report = resp.json()
        found["api-server"] = None if (report.get("metadatabase") or {}).get("status") == "healthy" else "no DB"
        for name in AIRFLOW_COMPONENTS:
            status = (report.get(name.replace("-", "_")) or {}).get("status")
            found[name] = None if status == "healthy" else f"status {status or 'unknown'} (no recent heartbeat)"
    if settings.airflow_executor == "CeleryExecutor":
        found["celery-worker"] = _celery_worker_problem(settings)
    if runs_own_dask(settings):
        found.update(_dask_problems(settings))
    resp = _get(f"http://{settings.serving_host}:{settings.serving_port}/health")
    found["serving"] = None if resp is not None and resp.status_code < 500 else "no answer at /health"
    return found


def _celery_worker_problem(settings: Settings) -> str | None:
    """None when a worker serving this stack's queue answers a ping through the broker."""
    from celery import Celery

    app = Celery(broker=settings.celery_broker_url.get_secret_value())
    try:
        replies = app.control.ping(timeout=1.0)
    except OSError as exc:
        return f"broker does not answer: {exc}"
    finally:
        app.close()
    mine = [name for reply in replies for name in reply if name.startswith(f"{settings.celery_queue}@")]
    return None if mine else f"no worker of queue {settings.celery_queue} answers a ping"


def _dask_problems(settings: Settings) -> dict[str, str | None]:
    from distributed import Client

    try:
        with Client(settings.dask_scheduler, timeout=2) as client:
            workers = len(client.scheduler_info().get("workers", {}))
    except (OSError, TimeoutError) as exc:
        return {"dask-scheduler": f"no answer at {settings.dask_scheduler}: {exc}", "dask-workers": "unknown"}
    wanted = settings.dask_workers
    return {
        "dask-scheduler": None,
        "dask-workers": None if workers >= wanted else f"{workers} of {wanted} workers connected",
    }
