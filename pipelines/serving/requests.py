"""Request bodies of the serving routes: parsed and checked by hand (the hot path skips a validation framework),
with errors that name the field and never echo more than a short prefix of what was sent."""

from __future__ import annotations

import datetime as dt
import json
import math
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


def timestamp(payload: dict[str, Any], field: str, default: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 time with its zone (``2025-02-05T10:00:00Z``), as an aware datetime."""
    value = payload.get(field)
    if value is None:
        if default is not None:
            return default
        raise BadRequest(422, f"{field}: required (an ISO 8601 time with its zone, e.g. 2025-02-05T10:00:00Z)")
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadRequest(422, f"{field}: expected an ISO 8601 time, got {excerpt(value)}")
    if parsed.tzinfo is None:
        raise BadRequest(422, f"{field}: {excerpt(value)} has no time zone; add one (e.g. Z or +01:00)")
    return parsed.astimezone(dt.UTC)


def number(payload: dict[str, Any], field: str, low: float, high: float, required: bool = True) -> float:
    value = payload.get(field)
    if value is None and not required:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(422, f"{field}: expected a number, got {excerpt(value)}")
    if not low <= value <= high:
        raise BadRequest(422, f"{field}: {excerpt(value)} is outside {low:g}..{high:g}")
    return float(value)


def text(payload: dict[str, Any], field: str, max_chars: int = 128, required: bool = True) -> str | None:
    value = payload.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(422, f"{field}: expected a non-empty string, got {excerpt(value)}")
    if len(value) > max_chars:
        raise BadRequest(422, f"{field}: {len(value)} characters; at most {max_chars}")
    return value
