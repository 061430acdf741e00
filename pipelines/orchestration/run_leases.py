"""Which in-process DAG runs are alive (local profile).

``dag.test`` runs a DAG inside the calling process: if that process is killed, Airflow's metadata DB keeps the run
and its task ``running`` forever (no scheduler watches it). Each in-process run therefore holds a lease, a small
file naming its process; a ``running`` run whose lease names no live process is *stuck*: ``mlctl status`` reports
it, and the next run of the same DAG and day replaces it (``dag.test`` deletes a day's earlier runs) and says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipelines.orchestration.airflow_env import configure_airflow
from pipelines.settings import Settings


@dataclass(frozen=True)
class StuckRun:
    dag_id: str
    logical_date: str  # YYYY-MM-DD
    run_id: str
    reason: str

    def command(self) -> str:
        return f"mlctl run {self.dag_id} --date {self.logical_date}"


def _lease_path(settings: Settings, dag_id: str, day: dt.date) -> Path:
    return settings.home / "airflow" / "leases" / dag_id / f"{day.isoformat()}.json"


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@contextlib.contextmanager
def lease(settings: Settings, dag_id: str, day: dt.date) -> Iterator[None]:
    """Hold the lease of ``dag_id``'s run for ``day`` while the block runs it in this process."""
    path = _lease_path(settings, dag_id, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tmp = path.with_suffix(f".{pid}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "started": _started(pid)}))
    tmp.replace(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(path.read_text()).get("pid") == pid:  # a later run of the day may hold it now
                path.unlink()


def _holder_alive(settings: Settings, dag_id: str, day: dt.date) -> tuple[bool, str]:
    """Whether a live process holds the lease, and why not when none does."""
    path = _lease_path(settings, dag_id, day)
    try:
        held = json.loads(path.read_text())
    except FileNotFoundError:
        return False, "no process holds it (its process ended without finishing the run)"
    except (OSError, ValueError) as exc:
        return False, f"its lease {path} is unreadable ({exc})"
    pid, started = held.get("pid"), held.get("started")
    alive = isinstance(pid, int) and _started(pid) is not None
    # The same pid with another start time is a new process that reused the number.
    if alive and started is not None and abs(_started(pid) - float(started)) > 1.0:
        alive = False
    return (True, "") if alive else (False, f"its process (pid {pid}) died while running it")


def stuck_runs(settings: Settings, dag_id: str | None = None, day: dt.date | None = None) -> list[StuckRun]:
    """``running`` in-process runs (of ``dag_id`` and ``day`` when given) whose process is gone."""
    configure_airflow(settings)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    stuck = []
    with create_session() as session:
        query = session.query(DagRun).filter(DagRun.state == DagRunState.RUNNING)
        if dag_id is not None:
            query = query.filter(DagRun.dag_id == dag_id)
        for run in query.all():
            if run.logical_date is None or (day is not None and run.logical_date.date() != day):
                continue
            alive, reason = _holder_alive(settings, run.dag_id, run.logical_date.date())
            if not alive:
                stuck.append(StuckRun(run.dag_id, run.logical_date.date().isoformat(), run.run_id, reason))
    return stuck
