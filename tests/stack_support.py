"""A throwaway stack for the integration tests: free ports, its own databases, bucket and Feast project."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.stack import supervisor
from pipelines.stack.ports import free_ports
from tests.conftest import service_unavailable

START = dt.date(2025, 1, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(7)]
HISTORY = DAYS[:4]  # loaded in-process; the last three days go through an Airflow backfill
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"
REDIS = "127.0.0.1:6379"


def stack_spec() -> dict:
    """purchase_intent with a 2-day label and 3/1/1 as-of days, so a 7-day world can train; scheduled (on stacks
    with training schedules on) only on its champion's drift, so the daily runs of the tests start no training."""
    spec = yaml.safe_load((PROJECT_ROOT / "models" / "purchase_intent.yaml").read_text())
    spec.update(windows={"train_days": 3, "validation_days": 1, "test_days": 1}, schedule="drift")
    spec["label"]["window_days"] = 2
    spec["params"].update(num_boost_round=40, min_data_in_leaf=20)
    spec["gate"] = {"floors": {"roc_auc": 0.55}, "max_regression": {"roc_auc": 0.05}, "min_lift_over_baseline": None}
    # A world this small is about orchestration, not model quality: no baseline check (tests/test_gate_rejects.py
    # and tests/test_real_log_training.py cover it).
    return spec


def require_services() -> None:
    """PostgreSQL and Redis must answer (on CI their absence fails the run)."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        service_unavailable("PostgreSQL", str(exc).strip())
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", str(exc))


@dataclass
class StackWorld:
    settings: Settings
    env: dict[str, str]
    workdir: Path

    def mlctl(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        mlctl = str(Path(sys.executable).with_name("mlctl"))
        return subprocess.run(
            [mlctl, *args], env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout
        )

    def popen_mlctl(self, *args: str, log: Path) -> subprocess.Popen:
        mlctl = str(Path(sys.executable).with_name("mlctl"))
        sink = open(log, "w")  # noqa: SIM115 - closed by the child's exit
        return subprocess.Popen([mlctl, *args], env=self.env, cwd=self.workdir, stdout=sink, stderr=subprocess.STDOUT)


def service_pid(state: dict, command: str) -> int:
    """The stack's ``airflow COMMAND`` process (its command line: python, [-m pipelines.stack.preload,]
    .../airflow, COMMAND); the topmost one, as the triggerer runs its triggers in a child of the same command line."""
    found: dict[int, int] = {}
    seen = []
    for pid in supervisor.stack_pids(state):
        with contextlib.suppress(OSError):
            # Split on spaces too: a process that imports gunicorn (MLflow does) has its command line rewritten
            # into one string by setproctitle.
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            if argv[-1:] == [command.encode()] and any(a.endswith(b"/airflow") for a in argv):
                found[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
            seen.append(b" ".join(argv).decode(errors="replace")[:120])
    top = [pid for pid, parent in found.items() if parent not in found]
    assert len(top) == 1, f"no single `airflow {command}` process in the stack; its processes: {seen}"
    return top[0]


def stack_settings(root: Path, **overrides: object) -> tuple[Settings, dict[str, str]]:
    """Settings of a private stack under ``root`` (``overrides`` win) and the environment that selects them in child
    processes."""
    suffix = secrets.token_hex(4)
    s3, mlflow, airflow, serving = free_ports(4)
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "purchase_intent.yaml").write_text(yaml.safe_dump(stack_spec()))
    credentials = {"AWS_ACCESS_KEY_ID": f"SF{suffix.upper()}", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24)}
    # Every location explicit: nothing may come from an environment another test left behind.
    fields: dict = dict(
        profile="stack",
        home=root / "home",
        stack_dir=root / "home" / "stack",
        airflow_home=root / "home" / "airflow",
        airflow_remote_log_folder=f"s3://sf-{suffix}/airflow-logs",
        mlflow_artifact_root="mlflow-artifacts:/",
        postgres_url=POSTGRES,
        airflow_db_uri=f"{POSTGRES}/sf_{suffix}_airflow",
        mlflow_backend_store_uri=f"{POSTGRES}/sf_{suffix}_mlflow",
        feast_registry=f"{POSTGRES}/sf_{suffix}_feast",
        feast_project=f"sf_{suffix}",
        redis_url=REDIS,
        lake_uri=f"s3://sf-{suffix}/lake",
        mlflow_artifacts_destination=f"s3://sf-{suffix}/mlflow",
        s3_endpoint_url=f"http://127.0.0.1:{s3}",
        mlflow_tracking_uri=f"http://127.0.0.1:{mlflow}",
        airflow_api_url=f"http://127.0.0.1:{airflow}",
        serving_port=serving,
        serving_refresh_seconds=1.0,
        models_dir=models,
        start_date=DAYS[0],
        end_date=DAYS[-1],
        airflow_catchup=False,
        training_schedules=False,
        sim_users=600,
        num_threads=1,
        **credentials,
    )
    settings = Settings(**(fields | overrides))
    env = {**os.environ, **settings.environment(), **credentials}
    return settings, env


def drop_stack_data(settings: Settings) -> None:
    import psycopg2
    import redis
    from sqlalchemy.engine import make_url

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for url in (settings.airflow_db_uri, settings.mlflow_backend_store_uri, settings.feast_registry):
            cur.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    conn.close()
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=b"*" + settings.feast_project.encode()):
        client.delete(key)


@contextlib.contextmanager
def start_world(root: Path, **overrides: object) -> Iterator[StackWorld]:
    """``mlctl stack up`` on a private stack; on exit ``mlctl stack down`` and drop what it created."""
    require_services()
    settings, env = stack_settings(root, **overrides)
    workdir = root / "workdir"
    workdir.mkdir()
    world = StackWorld(settings, env, workdir)
    try:
        result = world.mlctl("stack", "up", "--timeout", "300")
        assert result.returncode == 0, result.stdout + result.stderr + _logs(settings)
        yield world
    finally:
        state = supervisor.read_state(settings)
        world.mlctl("stack", "down")
        drop_stack_data(settings)
        assert state is None or supervisor.stack_pids(state) == [], "processes of the stack outlived `stack down`"
        assert settings.stack_dir is not None
        shutil.rmtree(settings.stack_dir / "s3-data", ignore_errors=True)


def _logs(settings: Settings) -> str:
    assert settings.stack_dir is not None
    logs = settings.stack_dir / "logs"
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))
