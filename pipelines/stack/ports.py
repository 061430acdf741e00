"""Ports of the stack: which ones the settings ask for, whether they are free, and spare ones for internals."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from urllib.parse import urlparse

_LOWEST = 20000  # above the ports services commonly publish (PostgreSQL 5432, Redis 6379, Airflow 8080...)


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port/...`` URL."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _outgoing_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; the usual 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (for listeners started a little later), chosen below the kernel's
    ephemeral range: a port the kernel hands out (bind to port 0) can be taken in the meantime by any process's
    outgoing connection, which once stopped a stack's api-server from binding while the tests ran beside it. A
    kernel whose outgoing range starts below 21000 leaves no such room: then any port from 20000 up."""
    top = min(_outgoing_low(), 32768)
    if top < _LOWEST + 1000:
        top = 65536
    ports: list[int] = []
    for port in random.sample(range(_LOWEST, top), top - _LOWEST):
        if port_is_free(host, port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise OSError(f"no {count} free ports on {host} between {_LOWEST} and {top - 1}")
