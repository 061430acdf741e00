"""A reviewer's decision on a model version, from Airflow's ApprovalOperator or ``mlctl approve|reject``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

TAG_STATUS, TAG_BY, TAG_AT, TAG_COMMENT = "approval.status", "approval.by", "approval.at", "approval.comment"
_STATUS = {"approve": "approved", "reject": "rejected"}


class ApprovalError(ValueError):
    """An approval payload cannot be read as an approve/reject decision."""


@dataclass(frozen=True)
class ApprovalRecord:
    """Who decided what about a model version, when, and why."""

    decision: Literal["approve", "reject"]
    by: str
    at: dt.datetime
    comment: str = ""

    @property
    def approved(self) -> bool:
        return self.decision == "approve"

    @classmethod
    def from_hitl(cls, payload: dict[str, Any]) -> ApprovalRecord:
        """Read the return value of Airflow's ApprovalOperator (``chosen_options``, ``responded_by_user``)."""
        if not isinstance(payload, dict):
            raise ApprovalError(f"approval payload must be a dict from ApprovalOperator, got {type(payload).__name__}")
        options = [str(o).strip().lower() for o in payload.get("chosen_options") or []]
        if len(options) != 1 or options[0] not in _STATUS:
            raise ApprovalError(
                f"approval payload 'chosen_options' is {payload.get('chosen_options')!r}; "
                "expected exactly one of ['Approve'] or ['Reject']"
            )
        user = payload.get("responded_by_user") or {}
        by = str(user.get("name") or user.get("id") or "") if isinstance(user, dict) else str(user)
        comment = (payload.get("params_input") or {}).get("comment") or ""
        return cls(options[0], by, _utc(payload.get("responded_at")), str(comment))  # type: ignore[arg-type]

    def to_tags(self) -> dict[str, str]:
        return {
            TAG_STATUS: _STATUS[self.decision],
            TAG_BY: self.by,
            TAG_AT: self.at.isoformat(),
            TAG_COMMENT: self.comment,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ApprovalRecord | None:
        """The record kept on a model version's tags, or None when nobody has decided yet."""
        status = tags.get(TAG_STATUS)
        decision = {v: k for k, v in _STATUS.items()}.get(status or "")
        if decision is None:
            return None
        return cls(decision, tags.get(TAG_BY, ""), _utc(tags.get(TAG_AT)), tags.get(TAG_COMMENT, ""))  # type: ignore[arg-type]


def _utc(value: dt.datetime | str | None) -> dt.datetime:
    if value is None or value == "":
        return dt.datetime.now(dt.UTC)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ApprovalError(f"approval time {value!r} is not an ISO-8601 timestamp") from exc
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
