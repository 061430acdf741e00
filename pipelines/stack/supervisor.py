"""``mlctl stack up | down | status``: the stack's processes under one honcho supervisor, in their own session.

honcho stops every service when one dies, so the stack is either whole or visibly down. Each process inherits a
``STOREFRONT_STACK_ID`` marker, which lets ``down`` find and stop anything that left the process group; the
sessions honcho started the services in are recorded too, so ``down`` also stops the orphans a killed service
leaves behind (their marker rewritten, their parent gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.orchestration.airflow_env import at_recorded_heads, migrate_db
from pipelines.serving.auth import ensure_admin_key
from pipelines.settings import Settings
from pipelines.stack import mlflow_auth, resources
from pipelines.stack.ports import free_ports, host_port, port_is_free
from pipelines.stack.resources import StackError
from pipelines.stack.services import (
    MLFLOW_ENV,
    SERVING_ENV,
    InternalPorts,
    environment,
    health,
    runs_own_dask,
    services,
    serving_keys_path,
)

STATE_FILE = "stack.json"


@dataclass
class ServiceStatus:
    name: str
    healthy: bool
    detail: str
    url: str = ""


@dataclass
class StackStatus:
    running: bool
    pid: int | None
    services: list[ServiceStatus] = field(default_factory=list)
    memory_mb: float = 0.0
    logs: Path | None = None

    @property
    def healthy(self) -> bool:
        return self.running and all(s.healthy for s in self.services)


def _state_path(settings: Settings) -> Path:
    assert settings.stack_dir is not None
    return settings.stack_dir / STATE_FILE


def read_state(settings: Settings) -> dict | None:
    path = _state_path(settings)
    return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _proc_stat(entry: Path) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ..., starttime (index 19), ...]."""
    return (entry / "stat").read_text().rsplit(") ", 1)[1].split()


def service_sessions(honcho_pid: int) -> list[dict[str, int]]:
    """The sessions honcho's services run in: every process below honcho that leads a session of its own (honcho
    starts each service with setsid, from a child of its own per service), with the leader's start time (clock
    ticks since boot), which is what :func:`stack_pids` needs to tell a killed service's orphans from strangers."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit():
                stats[int(entry.name)] = _proc_stat(entry)
    below, grown = {honcho_pid}, True
    while grown:
        more = {pid for pid, stat in stats.items() if int(stat[1]) in below} - below
        below |= more
        grown = bool(more)
    leaders = [pid for pid in below - {honcho_pid} if pid in stats and int(stats[pid][3]) == pid]
    return [{"sid": pid, "start": int(stats[pid][19])} for pid in sorted(leaders)]


def _ticks_at(wall_time: float) -> int:
    """A wall-clock time as clock ticks since boot (the unit of /proc/PID/stat's start time)."""
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:6] == "btime ")
    return int((wall_time - boot) * os.sysconf("SC_CLK_TCK"))


def _orphan_sessions(state: dict, starts: dict[int, int]) -> tuple[set[int], dict[int, tuple[int, int]]]:
    """The recorded service sessions whose members belong to the stack: those whose leader still runs (the same
    process: same start time), and, for a leader that died, the window its orphans can have started in.

    A pid stays allocated while any process has it as its session id, so a session whose leader died cannot be a
    recycled one while a member lives; a member started after the stack stopped (honcho's log last written, plus
    the 1 s rounding of the boot time) could only be a later session that reused the number, and is left alone.
    """
    live: set[int] = set()
    dead: dict[int, tuple[int, int]] = {}
    log = Path(state.get("honcho_log", ""))
    for session in state.get("sessions", []):
        sid, start = session["sid"], session["start"]
        if sid in starts:
            if starts[sid] == start:
                live.add(sid)
        elif log.is_file():
            dead[sid] = (start, _ticks_at(log.stat().st_mtime + 2.0))
    return live, dead


def stack_pids(state: dict) -> list[int]:
    """Live processes of the stack: in the supervisor's session, carrying the stack's marker, descending from one
    of those, or in a service's session recorded at `up` (:func:`service_sessions`).

    All are needed: Airflow's task processes rewrite their command line over their environment (setproctitle), and
    so does any process that imports gunicorn (MLflow does: the preloaded Celery worker), so the marker is gone from
    them; a server may start children in a session of their own; a child whose parent died is found by its marker,
    or by its service's session (a SIGKILLed scheduler's LocalExecutor workers and serve-logs, which rewrote their
    marker).
    """
    marker = f"STOREFRONT_STACK_ID={state['stack_id']}".encode()
    found: set[int] = set()
    parents: dict[int, int] = {}
    sessions: dict[int, tuple[int, int]] = {}  # pid -> (session, start time)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = _proc_stat(entry)
            if stat[0] == "Z":
                continue
            pid = int(entry.name)
            parents[pid] = int(stat[1])
            sessions[pid] = (int(stat[3]), int(stat[19]))
            if int(stat[3]) == state["pid"] or marker in (entry / "environ").read_bytes().split(b"\0"):
                found.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    live, dead = _orphan_sessions(state, {pid: start for pid, (_, start) in sessions.items()})
    for pid, (sid, start) in sessions.items():
        if sid in live or (sid in dead and dead[sid][0] <= start <= dead[sid][1]):
            found.add(pid)
    grown = True
    while grown:
        descendants = {pid for pid, parent in parents.items() if parent in found} - found
        found |= descendants
        grown = bool(descendants)
    return sorted(found)


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _published_ports(settings: Settings) -> dict[str, tuple[str, int]]:
    ports = {
        "mlflow": host_port(settings.mlflow_tracking_uri, 5000),
        "api-server": host_port(settings.airflow_api_url, 8080),
        "serving": (settings.serving_host, settings.serving_port),
    }
    if settings.s3_endpoint_url:
        ports["s3"] = host_port(settings.s3_endpoint_url, 8333)
    if runs_own_dask(settings):
        ports["dask-scheduler"] = host_port(settings.dask_scheduler, 8786)
    return ports


def _preflight(settings: Settings) -> None:
    taken = [f"{name} ({h}:{p})" for name, (h, p) in _published_ports(settings).items() if not port_is_free(h, p)]
    if taken:
        raise StackError(
            f"port taken: {', '.join(taken)}; stop what listens there (`ss -ltnp`) or choose other ports in the "
            "settings (STOREFRONT_S3_ENDPOINT_URL, STOREFRONT_MLFLOW_TRACKING_URI, STOREFRONT_AIRFLOW_API_URL, "
            "STOREFRONT_SERVING_PORT, STOREFRONT_DASK_SCHEDULER)"
        )
    resources.s3_credentials(settings)
    resources.check_redis(settings)
    resources.check_celery_broker(settings)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def up(settings: Settings, timeout: float = 180.0, on_event: Callable[[str], None] = print) -> StackStatus:
    """Start the stack and wait until every service is healthy; refuse clearly when it cannot."""
    if settings.profile != "stack":
        raise StackError("`mlctl stack up` needs the stack profile: set STOREFRONT_PROFILE=stack (see docs/stack.md)")
    current = status(settings)
    if current.running:
        on_event(f"the stack is already running (pid {current.pid})")
        return current
    started = time.monotonic()
    _preflight(settings)
    created = resources.ensure_databases(settings)
    on_event(f"PostgreSQL databases ready{' (created ' + ', '.join(created) + ')' if created else ''}")
    if at_recorded_heads(settings):
        on_event("Airflow metadata DB at its schema heads")
    else:
        migrate_db(settings)  # records the heads
        on_event(f"Airflow metadata DB migrated ({time.monotonic() - started:.0f} s)")

    assert settings.stack_dir is not None
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    internal = InternalPorts.pick(free_ports(InternalPorts.COUNT))
    stack_id = uuid.uuid4().hex
    procs = services(settings, internal)
    if settings.s3_endpoint_url:
        resources.write_s3_identities(settings, settings.stack_dir / "s3-identities.json")
    if settings.serving_api_keys is None:
        token = ensure_admin_key(serving_keys_path(settings))
        on_event(f"serving requires an API key: an all-models token is in {token} (0600)")
    mlflow_auth.write_server_env(settings, settings.stack_dir / MLFLOW_ENV)
    mlflow_auth.write_serving_env(settings, settings.stack_dir / SERVING_ENV)
    procfile = settings.stack_dir / "Procfile"
    # 0600 like the env files it names: what the stack runs is the stack owner's business alone.
    resources.write_private(procfile, "".join(p.procfile_line(logs) + "\n" for p in procs))
    honcho = str(Path(sys.executable).with_name("honcho"))
    with open(logs / "honcho.log", "ab") as sink:
        proc = subprocess.Popen(
            [honcho, "--no-colour", "start", "-f", str(procfile), "--env", os.devnull],
            cwd=settings.stack_dir,
            env={**os.environ, **environment(settings, internal, stack_id)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = {
        "pid": proc.pid,
        "stack_id": stack_id,
        "started_at": time.time(),
        "services": [p.name for p in procs],
        "honcho_log": str(logs / "honcho.log"),
    }
    _state_path(settings).write_text(json.dumps(state))
    on_event(f"started {len(procs)} services under honcho (pid {proc.pid}); logs in {logs}")

    pending = {p.name for p in procs}
    buckets_ready = not settings.s3_endpoint_url
    deadline = time.monotonic() + timeout
    problems: dict[str, str | None] = {}
    while pending:
        if proc.poll() is not None:
            dead = _first_dead_service(logs / "honcho.log") or "a service"
            down(settings)
            raise StackError(
                f"{dead} exited during start-up; its log ({logs / dead}.log) ends with:\n{_tail(logs / f'{dead}.log')}"
            )
        if time.monotonic() > deadline:
            down(settings)
            details = "; ".join(f"{name}: {problems.get(name)}" for name in sorted(pending))
            raise StackError(f"not healthy after {timeout:.0f} s: {details}; logs in {logs}")
        problems = health(settings)
        if not buckets_ready and problems.get("s3") is None:
            made = resources.ensure_buckets(settings)
            on_event(f"S3 buckets ready{' (created ' + ', '.join(made) + ')' if made else ''}")
            buckets_ready = True
        for name in sorted(pending):
            if problems.get(name) is None:
                if name == "mlflow":
                    _ensure_mlflow_accounts(settings, on_event)
                pending.discard(name)
                on_event(f"{name} healthy after {time.monotonic() - started:.0f} s")
        time.sleep(0.5)
    # Every service runs now: their sessions are known (a stack stopped during start-up has none recorded).
    state["sessions"] = service_sessions(proc.pid)
    _state_path(settings).write_text(json.dumps(state))
    result = status(settings)
    on_event(f"stack up in {time.monotonic() - started:.0f} s, {result.memory_mb:.0f} MB resident")
    return result


def _ensure_mlflow_accounts(settings: Settings, on_event: Callable[[str], None]) -> None:
    """The service accounts every other process uses, once the MLflow server answers; the stack stops if not."""
    try:
        made = mlflow_auth.ensure_accounts(settings)
    except (StackError, httpx.HTTPError) as exc:
        down(settings)
        raise StackError(f"cannot set up the MLflow service accounts: {exc}") from exc
    detail = f" (created {', '.join(made)})" if made else ""
    on_event(f"MLflow accounts ready{detail}: passwords in {settings.mlflow_auth_dir} (0600)")


def _first_dead_service(honcho_log: Path) -> str | None:
    """The service honcho saw exit first (its lines read ``HH:MM:SS name.1 | ... exited``)."""
    for line in _tail(honcho_log, 200).splitlines():
        if "exited with code" in line or "stopped (rc=" in line:
            name = line.split()[1].split(".")[0] if len(line.split()) > 1 else ""
            if name and name != "system":
                return name
    return None


def _kill(pid: int, sig: signal.Signals, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


# A stack whose supervisor is gone (a service died and honcho stopped the rest) has only orphans left: a killed
# scheduler's LocalExecutor workers, a killed triggerer's serve-logs. They have nothing to finish and some ignore
# SIGTERM, so they get this much instead of the full grace.
ORPHAN_GRACE_SECONDS = 3.0


def down(settings: Settings, grace: float = 30.0) -> int:
    """Stop every process of the stack (TERM, then KILL after ``grace`` s, or ``ORPHAN_GRACE_SECONDS`` when the
    supervisor is already gone); return how many were running."""
    state = read_state(settings)
    if state is None:
        return 0
    pid = state["pid"]
    pids = set(stack_pids(state))
    if not _alive(pid):
        grace = min(grace, ORPHAN_GRACE_SECONDS)
    _kill(pid, signal.SIGTERM, group=True)
    for other in pids - {pid}:  # those outside the process group
        _kill(other, signal.SIGTERM)
    _wait_gone(state, grace)
    for leftover in stack_pids(state):
        _kill(leftover, signal.SIGKILL)
    _kill(pid, signal.SIGKILL, group=True)
    # SIGKILL is delivered, not awaited: a loaded machine takes a moment to end them. `down` returns once they are
    # gone (or zombies), so the next `up` finds the ports and the sessions free.
    _wait_gone(state, 10)
    _state_path(settings).unlink(missing_ok=True)
    return len(pids)


def _wait_gone(state: dict, seconds: float) -> None:
    """Wait up to ``seconds`` until no process of the stack is left."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and stack_pids(state):
        time.sleep(0.2)


def status(settings: Settings) -> StackStatus:
    """Whether the stack runs, each service's health and the stack's resident memory."""
    state = read_state(settings)
    assert settings.stack_dir is not None
    logs = settings.stack_dir / "logs"
    if state is None or not _alive(state["pid"]):
        return StackStatus(running=False, pid=None, logs=logs)
    problems = health(settings)
    urls = {p.name: p.url for p in services(settings, InternalPorts.pick([0] * InternalPorts.COUNT))}
    found = [
        ServiceStatus(name, problems.get(name) is None, problems.get(name) or "healthy", urls.get(name, ""))
        for name in state["services"]
    ]
    memory = _rss_mb(stack_pids(state))
    return StackStatus(running=True, pid=state["pid"], services=found, memory_mb=memory, logs=logs)
