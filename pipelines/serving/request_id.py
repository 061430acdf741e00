"""A request id on every response (``X-Request-ID``) and every log line written while the request is served.

A caller's own ``X-Request-ID`` (up to 64 characters of letters, digits, ``-_.:``) is kept, so its logs and ours
share the id; otherwise one is made. Plain ASGI, not a ``BaseHTTPMiddleware``: it costs microseconds.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import Any

HEADER = b"x-request-id"
_VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Puts ``%(request_id)s`` on every record ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True


def of_request(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's valid ``X-Request-ID`` among an ASGI scope's headers, or a new id."""
    given = next((v for k, v in headers if k == HEADER), b"")
    return given.decode() if _VALID.match(given) else uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = of_request(scope["headers"])
        token = current.set(rid)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)
