"""`mlctl stack down` finds the orphans of a SIGKILLed service by the session it was started in (as honcho starts
each service), without taking a stranger for one: on plain processes, no stack needed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.settings import get_settings
from pipelines.stack.supervisor import STATE_FILE, down, service_sessions, stack_pids


def _wait_for(path: Path) -> int:
    deadline = time.time() + 10
    while not (path.exists() and path.read_text().strip()):
        assert time.time() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[dict]:
    """A stand-in for honcho (its own session) that starts one service, through a child of its own, in a session
    of its own, as honcho does; the service starts a worker that ignores SIGTERM, like the scheduler's
    LocalExecutor workers. Nothing carries the stack's marker."""
    runner = tmp_path / "runner.sh"
    runner.write_text(
        f"setsid sh -c '(trap \"\" TERM; exec sleep 300) & echo $! > {tmp_path}/worker; exec sleep 300' &\n"
        f"echo $! > {tmp_path}/service\nwait\n"
    )
    honcho = subprocess.Popen(["sh", "-c", f"sh {runner} & wait"], start_new_session=True)
    service, worker = _wait_for(tmp_path / "service"), _wait_for(tmp_path / "worker")
    log = tmp_path / "honcho.log"
    log.write_text("")
    state = {"pid": honcho.pid, "stack_id": uuid.uuid4().hex, "honcho_log": str(log)}
    deadline = time.time() + 10
    while not (sessions := service_sessions(honcho.pid)):
        assert time.time() < deadline
        time.sleep(0.05)
    state["sessions"] = sessions
    try:
        yield {"state": state, "honcho": honcho, "service": service, "worker": worker, "log": log}
    finally:
        for pid in (worker, service):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(honcho.pid, signal.SIGKILL)
        honcho.wait()


def _kill_service(supervised: dict) -> None:
    """SIGKILL the service; its parent reaps it and the stack stops (here: the stand-in exits)."""
    os.kill(supervised["service"], signal.SIGKILL)
    supervised["honcho"].wait(timeout=10)
    supervised["log"].write_text("service.1 stopped (rc=-9)\n")


def test_the_services_session_is_recorded_with_its_leaders_start_time(supervised: dict) -> None:
    (session,) = supervised["state"]["sessions"]
    assert session["sid"] == supervised["service"]
    start = int(Path(f"/proc/{supervised['service']}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    assert session["start"] == start


def test_the_orphan_of_a_killed_service_is_still_a_stack_process(supervised: dict) -> None:
    assert supervised["worker"] in stack_pids(supervised["state"])
    _kill_service(supervised)

    # The worker's parent is gone (it was re-parented); its session is what ties it to the stack.
    assert supervised["worker"] in stack_pids(supervised["state"])


def test_a_session_whose_leader_is_another_process_is_not_the_stacks(supervised: dict) -> None:
    """A recorded session whose leader now has another start time is a recycled pid: nothing of it is taken."""
    stranger = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    try:
        start = int(Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
        state = supervised["state"] | {"sessions": [{"sid": stranger.pid, "start": start + 1}]}
        assert stranger.pid not in stack_pids(state)
        # The same session recorded with its leader's own start time would be the stack's.
        assert stranger.pid in stack_pids(state | {"sessions": [{"sid": stranger.pid, "start": start}]})
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_a_process_started_after_the_stack_stopped_is_not_taken_for_an_orphan(supervised: dict) -> None:
    _kill_service(supervised)
    # honcho's log last written long before the worker started: the worker cannot be the dead service's orphan.
    stopped = time.time() - 3600
    os.utime(supervised["log"], (stopped, stopped))

    assert supervised["worker"] not in stack_pids(supervised["state"])


def test_down_after_a_service_died_kills_its_orphans_without_waiting_the_grace(
    supervised: dict, tmp_path: Path
) -> None:
    """The stack stopped itself (a service died, honcho is gone): `stack down` gives what is left, orphans that
    ignore SIGTERM, a few seconds instead of the grace meant for live services, then SIGKILL."""
    _kill_service(supervised)
    settings = get_settings(profile="stack", home=tmp_path / "home")
    assert settings.stack_dir is not None
    settings.stack_dir.mkdir(parents=True)
    (settings.stack_dir / STATE_FILE).write_text(json.dumps(supervised["state"]))
    stopping = threading.Thread(target=down, args=(settings,), kwargs={"grace": 3600}, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    assert not stopping.is_alive(), "`stack down` waited the live services' grace for the orphans of a dead stack"
    assert not Path(f"/proc/{supervised['worker']}").exists() or _zombie(supervised["worker"])
    assert not (settings.stack_dir / STATE_FILE).exists()


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    return True
