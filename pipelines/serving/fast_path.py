"""The serving app, with its scoring routes answered before Starlette's routing layers.

A scoring request through FastAPI passes its middleware stack (server errors, request id, exceptions, the exit
stack), the router's path matching over every route, and FastAPI's request and dependency handling: about a quarter
of a checkout score's time in a worker at 500 requests/s (py-spy, 2026-12-07), which widens the tail. Here a POST to
``/v1/models/{model}/{predict|score|rank}`` goes straight to the routes' own handler (pipelines/serving/routes.py:
the same API keys, errors, metrics and answers) with the request id set as RequestIdMiddleware sets it; every other
request goes through FastAPI as before.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from pipelines.serving import request_id
from pipelines.serving.routes import SCORING_ROUTES, ScoringRoutes

_SCORING_PATH = re.compile(r"^/v1/models/([^/]+)/(" + "|".join(SCORING_ROUTES) + r")$")


class ServingApp(FastAPI):
    """FastAPI, except for the scoring routes (see the module's docstring)."""

    scoring: ScoringRoutes | None = None  # set by create_app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.scoring is not None:
            found = _SCORING_PATH.match(scope["path"])
            if found is not None:
                await self._score(scope, receive, send, found[1], found[2])
                return
        await super().__call__(scope, receive, send)

    async def _score(self, scope: dict, receive: Any, send: Any, model: str, route: str) -> None:
        assert self.scoring is not None
        rid = request_id.of_request(scope["headers"])
        token = request_id.current.set(rid)
        try:
            body = await _body(receive)
            if body is None:
                return  # the client went away before sending its body
            given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            authorization = given.decode("latin-1") if given is not None else None
            response = await self.scoring(authorization, body, model, route)
            response.raw_headers.append((request_id.HEADER, rid.encode()))
            await response(scope, receive, send)
        finally:
            request_id.current.reset(token)


async def _body(receive: Any) -> bytes | None:
    """The whole request body; None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
