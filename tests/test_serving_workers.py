"""`mlctl serve`'s workers: each on a socket of its own on one port, spread over by the kernel, replaced when one
dies, stopped by SIGTERM; a port already taken is an error, never shared (pipelines/serving/workers.py)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipelines.stack.ports import free_ports


def _serve(port: int, workers: int) -> subprocess.Popen[str]:
    options = {"app": "tests.pid_app:app", "host": "127.0.0.1", "port": port, "log_level": "warning"}
    code = f"from pipelines.serving import workers; raise SystemExit(workers.serve({options!r}, {workers}))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pids(port: int, connections: int) -> set[int]:
    """The worker pid answering each of ``connections`` connections opened at once."""
    opened = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(connections)]
    try:
        for connection in opened:
            connection.connect()
        pids = set()
        for connection in opened:
            connection.request("GET", "/")
            pids.add(int(connection.getresponse().read()))
        return pids
    finally:
        for connection in opened:
            connection.close()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if found := predicate():
                return found
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s")


@pytest.fixture
def server():
    port = free_ports(1)[0]
    process = _serve(port, 2)
    try:
        _wait_for(lambda: len(_pids(port, 32)) == 2)
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(30)


def test_connections_opened_at_once_reach_both_workers_and_a_killed_worker_is_replaced(server) -> None:
    port, process = server
    first = _pids(port, 32)
    assert len(first) == 2  # one socket each: 32 connections all on one worker would be 1 in 2^31
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replacement() -> set[int] | None:
        pids = _pids(port, 32)
        return pids if len(pids) == 2 and victim not in pids else None

    replaced = _wait_for(replacement)
    assert replaced - first and len(replaced) == 2
    assert process.poll() is None

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    for pid in replaced:  # the workers went with it
        _wait_for(lambda pid=pid: not _running(pid))


def test_workers_of_a_killed_supervisor_stop_and_free_the_port(server) -> None:
    port, process = server
    workers = _pids(port, 32)
    process.kill()
    process.wait(30)
    for pid in workers:
        _wait_for(lambda pid=pid: not _running(pid), 30)
    again = _serve(port, 1)  # the port is free again
    try:
        assert len(_wait_for(lambda: _pids(port, 4))) == 1
    finally:
        again.terminate()
        assert again.wait(30) == 0


def test_a_port_another_server_listens_on_is_refused_not_shared(server) -> None:
    port, _ = server
    second = _serve(port, 2)
    output, _ = second.communicate(timeout=60)
    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert len(_pids(port, 32)) == 2  # the first server answers on


def test_a_plain_listener_on_the_port_is_refused_too() -> None:
    port = free_ports(1)[0]
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        second = _serve(port, 1)
        output, _ = second.communicate(timeout=60)
    assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in output
