"""Several uvicorn worker processes on one port, each listening on a socket of its own (``SO_REUSEPORT``).

uvicorn's own ``workers=N`` hands every worker the same listening socket, and the first worker to wake takes every
connection waiting at that moment: under a burst of new connections one worker got 27 of 32 and queued their
requests while the other idled (the p99 of checkout scoring at 500 requests/s doubled). With a socket per worker
the kernel spreads new connections over the workers by their addresses. A worker that dies is replaced (its
socket with it); one that fails at start-up stops the server, as uvicorn's supervisor does.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger(__name__)

STOP_SECONDS = 30.0  # a worker's graceful stop (in-flight requests, rows handed to the writer) before SIGKILL
_PR_SET_PDEATHSIG = 1  # prctl(2)


class PortUnavailable(RuntimeError):
    """The serving port cannot be listened on (taken by another process, or not an address of this host)."""


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when the supervisor dies, even by SIGKILL (Linux): an orphaned
    worker would go on answering on the port, with no one to stop it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(options: dict[str, Any], sock: socket.socket, parent: int) -> None:
    """A worker process: uvicorn serving the app on its own socket."""
    _die_with(parent)
    uvicorn.Server(uvicorn.Config(**options)).run(sockets=[sock])


def serve(options: dict[str, Any], workers: int) -> int:
    """Run ``workers`` uvicorn processes of ``uvicorn.Config(**options)`` (``host`` and ``port`` among them) until
    SIGINT or SIGTERM; returns the exit code (0, or 1 when a worker failed at start-up)."""
    host, port = options["host"], options["port"]
    # A plain bind first: a port another server listens on (even with SO_REUSEPORT) is an error, never shared.
    _socket(host, port, reuse_port=False).close()
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start() -> BaseProcess:
        sock = _socket(host, port, reuse_port=True)
        process = context.Process(target=_worker, args=(options, sock, os.getpid()), name="serving-worker")
        process.start()
        sock.close()  # the worker holds it now; a copy here would stay in the port's group after the worker died
        return process

    code = 0
    processes = [start() for _ in range(workers)]
    try:
        while not stop.wait(0.5):
            for i, process in enumerate(processes):
                if process.exitcode is None:
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("serving worker %d failed to start (its log is above); stopping", process.pid)
                    code = 1
                    stop.set()
                    break
                log.error("serving worker %d exited with code %s; starting another", process.pid, process.exitcode)
                processes[i] = start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            if process.exitcode is None:
                process.terminate()
        for process in processes:
            process.join(STOP_SECONDS)
            if process.exitcode is None:
                log.error("serving worker %d did not stop within %g s; killed", process.pid, STOP_SECONDS)
                process.kill()
                process.join()
    return code
