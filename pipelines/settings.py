"""One typed settings object for the whole platform.

Built once at the edge (CLI, DAG file, serving app) from the environment (prefix ``STOREFRONT_``) or a ``.env``
file, then passed down. The ``local`` profile keeps everything under ``./.storefront/`` with embedded stores
(SQLite, files); the ``stack`` profile points the same code at PostgreSQL, Redis and S3.
"""

from __future__ import annotations

import datetime as dt
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The MLflow service account of pipelines and mlctl on the stack (pipelines/stack/mlflow_auth.py creates it).
MLFLOW_PIPELINES_ACCOUNT = "storefront-pipelines"
# Secrets that child processes get under their own names (AWS_*, MLFLOW_TRACKING_*), never as STOREFRONT_*.
_OWN_NAME_SECRETS = frozenset({"aws_access_key_id", "aws_secret_access_key", "mlflow_username", "mlflow_password"})
# Dates that, unless set explicitly, follow the data (the span `mlctl ingest` landed).
_DATA_DATES = frozenset({"start_date", "end_date"})


class Settings(BaseSettings):
    """Where every store lives, for one profile. Nothing else in the code hard-codes a path or a URL."""

    model_config = SettingsConfigDict(env_prefix="STOREFRONT_", env_file=".env", extra="ignore")

    profile: Literal["local", "stack"] = "local"
    home: Path = Field(default=Path(".storefront"), description="Root of all local state (local profile).")

    # Lake: a local directory or s3://bucket/prefix.
    lake_uri: str = ""
    # Airflow
    airflow_home: Path | None = None
    airflow_db_uri: str = ""
    airflow_api_url: str = Field(default="", description="Airflow REST API; empty = in-process API (local).")
    airflow_username: str = "engineer"
    airflow_password: SecretStr = SecretStr("")
    airflow_parallelism: int = 4
    airflow_executor: Literal["LocalExecutor", "CeleryExecutor"] = Field(
        default="LocalExecutor",
        description="Stack: LocalExecutor (scheduler forks tasks) or CeleryExecutor (`celery worker` processes).",
    )
    celery_broker_url: SecretStr = Field(
        default=SecretStr("amqp://127.0.0.1:5672//"),
        description="CeleryExecutor's broker (RabbitMQ; with no user in the URL, RabbitMQ's loopback guest user).",
    )
    celery_worker_concurrency: int = Field(default=2, description="Task slots of the stack's Celery worker.")
    airflow_remote_log_folder: str = Field(default="", description="Task logs in object storage (stack: S3).")
    airflow_catchup: bool = Field(
        default=True, description="Scheduler runs every missed day since start_date (False: only the newest)."
    )
    local_lanes: int = Field(
        default=0,
        ge=0,
        description="Local profile: days of a daily-features backfill run side by side in this many processes (each "
        "day starts once the day before has validated its data); 0: two when two cores are idle, else one.",
    )
    task_retry_delay_seconds: float = Field(
        default=30.0, gt=0, description="Wait before a failed daily task's retry (a service back after a blip)."
    )
    training_schedules: bool = Field(
        default=True,
        description="Training DAGs run on their model spec's schedule (False: only when triggered, e.g. tests).",
    )
    airflow_users: str = Field(
        default="engineer:admin,alice:op,bob:op,carol:op",
        description="SimpleAuthManager users as name:role; reviewers named in model specs need a login here.",
    )
    # MLflow (stack: clients talk to `mlflow server`, which keeps runs in PostgreSQL and proxies artifacts to S3)
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = Field(default="", description="Where clients put artifacts (local dir or URI).")
    mlflow_backend_store_uri: str = Field(default="", description="The MLflow server's database (stack).")
    mlflow_artifacts_destination: str = Field(default="", description="Where the MLflow server stores artifacts.")
    # Who this process is to an MLflow server with authentication (stack: MLflow's basic-auth app). MLflow's own
    # variable names; unset on the stack means the pipelines service account, whose password `stack up` keeps in a
    # 0600 file (mlflow_password_file). `mlctl serve` on the stack gets the read-only account (docs/governance.md).
    mlflow_username: str = Field(default="", validation_alias="MLFLOW_TRACKING_USERNAME")
    mlflow_password: SecretStr | None = Field(default=None, validation_alias="MLFLOW_TRACKING_PASSWORD")
    mlflow_password_file: Path | None = Field(
        default=None,
        description="0600 file with the MLflow password, read when MLFLOW_TRACKING_PASSWORD is unset (stack default: "
        "the pipelines account's file under stack_dir/mlflow-auth/).",
    )
    mlflow_auth_db_uri: str = Field(
        default="", description="Users and grants of the stack's MLflow basic-auth app (SQLite file or PostgreSQL)."
    )
    # Feast
    feast_project: str = "storefront"
    feast_registry: str = Field(default="", description="Registry path (file) or SQLAlchemy URL (sql).")
    feast_online_store: Literal["sqlite", "redis"] | None = Field(default=None, description="sqlite or redis")
    feast_online_path: str = ""
    redis_url: str = "127.0.0.1:6379"
    feast_online_write_batch_size: int = 10_000
    # S3 (stack profile; credentials come from the environment, never from code). Unset on the stack means the
    # loopback SeaweedFS of `mlctl stack up`; set it to "" for AWS's own endpoints.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    aws_access_key_id: SecretStr | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")
    # PostgreSQL (stack profile)
    postgres_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432"
    # The loopback stack of `mlctl stack up`: service logs, pids and SeaweedFS data
    stack_dir: Path | None = None
    # Serving
    serving_host: str = "127.0.0.1"
    serving_port: int = 8000
    serving_refresh_seconds: float = 5.0
    serving_workers: int = Field(
        default=2, ge=1, description="Serving processes (`mlctl serve`); each loads and hot-swaps the models itself."
    )
    serving_log_predictions: bool = Field(
        default=True, description="Append every served score and its features to the lake (predictions/<model>/)."
    )
    serving_clock: dt.datetime | None = Field(
        default=None,
        description="Serving a simulated or historical world: the instant logged predictions are stamped with and "
        "rollouts start and end at (ab-report then labels them with that world's later days). Unset = the wall "
        "clock.",
    )
    serving_api_keys: Path | None = Field(
        default=None,
        description="0600 YAML file of API key hashes and their models (pipelines/serving/auth.py); unset = no "
        "authentication, refused on the stack profile.",
    )
    # Data source of the daily extract: the simulator (embedded default), or days landed by `mlctl ingest`
    data_source: Literal["simulator", "ingested"] = "simulator"
    start_date: dt.date = Field(
        default=dt.date(2025, 1, 1),
        description="First day the DAGs schedule; with data_source=ingested, unless set, the first landed day.",
    )
    end_date: dt.date | None = Field(
        default=None,
        description="Last day the daily DAG schedules (None: open); with data_source=ingested, unless set, the "
        "last landed day.",
    )
    sim_seed: int = 7
    sim_users: int = 5000
    sim_shift_day: dt.date | None = Field(
        default=None,
        description="From this day on the simulated users browse sim_shift_sessions times as often (a change of "
        "behaviour that monitoring should see as drift); None: no change.",
    )
    sim_shift_sessions: float = Field(default=3.0, gt=0, description="Session-rate multiplier from sim_shift_day.")
    # Model specs (tests point this at small specs)
    models_dir: Path = PROJECT_ROOT / "models"
    # Compute
    num_threads: int = 2
    compute: Literal["pandas", "dask"] = Field(
        default="pandas", description="Engine of user features, training sets and training (docs/deploy.md)."
    )
    dask_scheduler: str = Field(
        default="", description="Dask scheduler address (tcp://host:8786); empty = a LocalCluster in this process."
    )
    dask_workers: int = Field(default=2, description="LocalCluster worker processes (one thread each).")
    dask_worker_memory: str = Field(default="3GiB", description="LocalCluster memory limit per worker.")
    dask_partitions: int = Field(default=0, description="Hash partitions of the entity key; 0 = 4 per worker.")

    @model_validator(mode="after")
    def _fill_profile_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        home = self.home
        if self.profile == "local":
            self.lake_uri = self.lake_uri or str(home / "lake")
            self.airflow_home = self.airflow_home or home / "airflow"
            self.airflow_db_uri = self.airflow_db_uri or f"sqlite:///{home / 'airflow' / 'airflow.db'}"
            self.mlflow_tracking_uri = self.mlflow_tracking_uri or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            self.mlflow_artifact_root = self.mlflow_artifact_root or str(home / "mlflow" / "artifacts")
            self.feast_registry = self.feast_registry or str(home / "feast" / "registry.db")
            self.feast_online_path = self.feast_online_path or str(home / "feast" / "online.db")
            self.feast_online_store = self.feast_online_store or "sqlite"
        else:
            self._fill_stack_defaults()
        self.stack_dir = (self.stack_dir or home / "stack").expanduser().resolve()
        if self.serving_clock is not None and self.serving_clock.tzinfo is None:
            self.serving_clock = self.serving_clock.replace(tzinfo=dt.UTC)  # as the prediction log reads it
        if self.profile == "stack":
            self._fill_mlflow_auth_defaults()
        return self

    def _fill_mlflow_auth_defaults(self) -> None:
        """The stack's MLflow server authenticates: by default this process is the pipelines' service account."""
        auth_dir = self.mlflow_auth_dir
        self.mlflow_auth_db_uri = self.mlflow_auth_db_uri or f"sqlite:///{auth_dir / 'auth.db'}"
        self.mlflow_username = self.mlflow_username or MLFLOW_PIPELINES_ACCOUNT

    def _fill_stack_defaults(self) -> None:
        """Loopback defaults for the stack of ``mlctl stack up``; every one can point elsewhere (docs/stack.md)."""
        pg = self.postgres_url.rstrip("/")
        self.lake_uri = self.lake_uri or "s3://storefront/lake"
        if self.s3_endpoint_url is None and self.lake_is_s3:
            self.s3_endpoint_url = "http://127.0.0.1:8333"
        self.airflow_home = self.airflow_home or self.home / "airflow"
        self.airflow_db_uri = self.airflow_db_uri or f"{pg}/storefront_airflow"
        self.airflow_api_url = self.airflow_api_url or "http://127.0.0.1:8080"
        if not self.airflow_remote_log_folder and self.lake_is_s3:
            bucket = self.lake_uri.removeprefix("s3://").split("/")[0]
            self.airflow_remote_log_folder = f"s3://{bucket}/airflow-logs"
        self.mlflow_tracking_uri = self.mlflow_tracking_uri or "http://127.0.0.1:5000"
        # Clients send artifacts through the tracking server, which alone holds the S3 credentials it needs.
        self.mlflow_artifact_root = self.mlflow_artifact_root or "mlflow-artifacts:/"
        self.mlflow_backend_store_uri = self.mlflow_backend_store_uri or f"{pg}/storefront_mlflow"
        self.mlflow_artifacts_destination = self.mlflow_artifacts_destination or "s3://storefront/mlflow"
        self.feast_registry = self.feast_registry or f"{pg}/storefront_feast"
        self.feast_online_store = self.feast_online_store or "redis"
        if self.compute == "dask" and not self.dask_scheduler:
            # The stack starts its own scheduler and worker processes on loopback (pipelines/stack/services.py).
            self.dask_scheduler = "tcp://127.0.0.1:8786"

    @property
    def start_date_explicit(self) -> bool:
        """Whether start_date was set (environment, .env or argument) rather than left to its default."""
        return "start_date" in self.model_fields_set

    @property
    def end_date_explicit(self) -> bool:
        return "end_date" in self.model_fields_set

    @property
    def celery_queue(self) -> str:
        """The Celery queue of this stack's tasks: stacks sharing one broker never take each other's tasks."""
        return f"storefront_{self.feast_project}"

    @property
    def mlflow_auth_dir(self) -> Path:
        """Where the stack keeps its MLflow auth ini, service-account passwords and (default) auth database."""
        assert self.stack_dir is not None
        return self.stack_dir / "mlflow-auth"

    def mlflow_identity(self) -> tuple[str, SecretStr] | None:
        """``(username, password)`` for the MLflow server, or None when none is configured (local profile).

        The password file is read on each call: settings built before ``stack up`` made it still find it."""
        if not self.mlflow_username:
            return None
        if self.mlflow_password is not None:
            return self.mlflow_username, self.mlflow_password
        path = self.mlflow_password_file
        if path is None and self.profile == "stack" and self.mlflow_username == MLFLOW_PIPELINES_ACCOUNT:
            path = self.mlflow_auth_dir / f"{MLFLOW_PIPELINES_ACCOUNT}.password"
        if path is not None and path.exists():
            return self.mlflow_username, SecretStr(path.read_text().strip())
        return None

    def mlflow_client_environment(self) -> dict[str, str]:
        """MLflow's client variables for this identity (empty without one): MLflow reads no other source."""
        identity = self.mlflow_identity()
        if identity is None:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": identity[0], "MLFLOW_TRACKING_PASSWORD": identity[1].get_secret_value()}

    @property
    def lake_is_s3(self) -> bool:
        return self.lake_uri.startswith("s3://")

    @property
    def feast_repo_path(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    @property
    def expectations_dir(self) -> Path:
        return PROJECT_ROOT / "expectations"

    @property
    def dags_dir(self) -> Path:
        return PROJECT_ROOT / "dags"

    @cached_property
    def storage_options(self) -> dict[str, str]:
        """fsspec/pyarrow-style options for S3 (empty for a local lake)."""
        if not self.lake_is_s3:
            return {}
        opts: dict[str, str] = {"region": self.s3_region}
        if self.s3_endpoint_url:
            opts["endpoint_url"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            opts["key"] = self.aws_access_key_id.get_secret_value()
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        return opts

    def environment(self) -> dict[str, str]:
        """These settings as ``STOREFRONT_*`` variables, so child processes (Airflow tasks, servers) agree."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None or name in _OWN_NAME_SECRETS:
                continue
            # A date left to its default stays unset, so a child (a DAG file) can still follow the landed span.
            if name in _DATA_DATES and name not in self.model_fields_set:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"STOREFRONT_{name.upper()}"] = str(value)
        return env


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests use them)."""
    return Settings(**overrides)  # type: ignore[arg-type]
