"""Request bodies of the serving routes: parsed and checked by hand (the hot path skips a validation framework),
with errors that name the field and never echo more than a short prefix of what was sent."""

from __future__ import annotations

import json
from typing import Any

INT64_MAX = 2**63 - 1
ECHO_CHARS = 40  # at most this much of a bad value appears in an error body


class BadRequest(ValueError):
    """The body cannot be served as sent: ``status`` 400 (not JSON) or 422 (not the documented shape)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def excerpt(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})") from exc
    if not isinstance(payload, dict):
        raise BadRequest(422, f"body must be a JSON object, got {type(payload).__name__}")
    return payload


def entity_id(value: Any, field: str) -> int:
    """An id: a JSON integer in [0, 2**63 - 1] (the int64 range the stores key on; negative ids are not issued)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(422, f"{field}: expected an integer id, got {excerpt(value)}")
    if not 0 <= value <= INT64_MAX:
        raise BadRequest(422, f"{field}: id {excerpt(value)} is outside 0..{INT64_MAX}")
    return value


def id_list(payload: dict[str, Any], field: str, max_items: int, required: bool = True) -> list[int] | None:
    """``payload[field]`` as a non-empty list of at most ``max_items`` ids."""
    if field not in payload or payload[field] is None:
        if required:
            raise BadRequest(422, f"{field}: required (a list of 1..{max_items} integer ids)")
        return None
    values = payload[field]
    if not isinstance(values, list):
        raise BadRequest(422, f"{field}: expected a list of integer ids, got {excerpt(values)}")
    if not 1 <= len(values) <= max_items:
        raise BadRequest(422, f"{field}: {len(values)} ids; send 1..{max_items} per request")
    return [entity_id(v, f"{field}[{i}]") for i, v in enumerate(values)]
