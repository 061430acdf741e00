"""Target tables of the adapters: their schema (looked up in ``schemas.TABLES`` at call time) and ingest rules.

The rules are what makes a file unfit to land at all (no id, a negative price, a time in the future); the
expectation suites in ``expectations/`` judge published partitions afterwards, with severities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipelines.data import schemas
from pipelines.data.adapters.errors import MappingError


@dataclass(frozen=True)
class TableRules:
    """What every row of a table must satisfy before a file is ingested."""

    time_column: str  # partitions are days of this column (UTC)
    id_column: str | None
    required: tuple[str, ...]
    non_negative: tuple[str, ...] = ()
    allowed: dict[str, tuple[str, ...]] = field(default_factory=dict)


RULES: dict[str, TableRules] = {
    "events": TableRules(
        time_column="event_time",
        id_column="event_id",
        required=("event_id", "event_time", "user_id", "event_type", "product_id"),
        non_negative=("price",),
        allowed={"event_type": schemas.EVENT_TYPES},
    ),
    "orders": TableRules(
        time_column="purchase_time",
        id_column="order_id",
        required=("order_id", "user_id", "purchase_time", "purchase_value"),
        non_negative=("purchase_value", "age"),
    ),
    "order_labels": TableRules(
        time_column="label_time", id_column="order_id", required=("order_id", "is_fraud", "label_time")
    ),
}


def target_schema(table: str, where: Path | str) -> pa.Schema:
    """The canonical schema of ``table``; ``where`` (the mapping file) is named when the table is unknown."""
    schema = schemas.TABLES.get(table)
    if schema is None or table not in RULES:
        known = sorted(set(RULES))
        raise MappingError(
            where, f"key 'tables.{table}': no adapter target of that name", f"map onto one of {', '.join(known)}"
        )
    return schema


def table_rules(table: str) -> TableRules:
    return RULES[table]
