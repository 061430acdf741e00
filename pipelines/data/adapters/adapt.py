"""Read a source file and map it onto its canonical tables, checking everything before anything is written."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.data.adapters.checks import check_table
from pipelines.data.adapters.errors import SourceRuleError, SourceValueError
from pipelines.data.adapters.mapping import Mapping, load_mapping
from pipelines.data.adapters.source import Drop, Progress, RawTable, read_source
from pipelines.data.adapters.targets import table_rules
from pipelines.data.adapters.transform import LINE, map_table


@dataclass
class Adapted:
    """Canonical frames (with ``_line``), sorted by the table's time column and then source line."""

    source: Path
    mapping: Mapping
    tables: dict[str, pd.DataFrame]
    rows_read: int
    drops: list[Drop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def adapt(
    source: Path, mapping_path: Path, now: dt.datetime | None = None, on_progress: Progress | None = None
) -> Adapted:
    """The whole file mapped and checked, or an IngestError subclass naming the file, column, line and fix."""
    mapping = load_mapping(mapping_path)
    raw = read_source(source, mapping, on_progress)
    rows_read = len(raw.frame) + len(raw.drops)
    now = now or dt.datetime.now(dt.UTC)
    tables = _map_all(raw, mapping, Path(mapping_path), now, on_progress)
    return Adapted(Path(source), mapping, tables, rows_read, drops=raw.drops, notes=raw.notes)


def _map_all(
    raw: RawTable, mapping: Mapping, mapping_path: Path, now: dt.datetime, on_progress: Progress | None
) -> dict[str, pd.DataFrame]:
    try:
        return _map_and_check(raw, mapping, mapping_path, now, on_progress)
    except (SourceValueError, SourceRuleError) as exc:
        # A last line without a terminator whose values do not parse was cut inside its last field.
        if raw.unterminated_last is None or exc.line != raw.unterminated_last:
            raise
        raw.drop_lines([raw.unterminated_last], f"truncated last line: no line terminator and {exc.problem}")
        raw.unterminated_last = None
        return _map_and_check(raw, mapping, mapping_path, now, on_progress)


def _map_and_check(
    raw: RawTable, mapping: Mapping, mapping_path: Path, now: dt.datetime, on_progress: Progress | None
) -> dict[str, pd.DataFrame]:
    tables: dict[str, pd.DataFrame] = {}
    for i, table in enumerate(mapping.tables):
        frame = map_table(raw, mapping, mapping_path, table)
        check_table(frame, table, mapping, raw.path, now, raw.locator)
        time_column = table_rules(table).time_column
        tables[table] = frame.sort_values([time_column, LINE], kind="stable").reset_index(drop=True)
        if on_progress:
            on_progress("map", i + 1, len(mapping.tables))
    if raw.unterminated_last is not None:
        raw.notes.append(
            f"line {raw.unterminated_last} (the last) has no line terminator; kept because all its fields parse"
        )
    return tables
