"""Errors of the adapters: each names the file, where in it (column, line or row) and what to do next."""

from __future__ import annotations

from pathlib import Path


class IngestError(ValueError):
    """A source file or its mapping cannot be ingested; nothing was written to the lake."""

    def __init__(
        self,
        file: Path | str,
        problem: str,
        hint: str,
        *,
        column: str | None = None,
        line: int | None = None,
        locator: str = "line",
    ) -> None:
        self.file = str(file)
        self.problem = problem
        self.hint = hint
        self.column = column
        self.line = line
        where = [self.file]
        if line is not None:
            where.append(f"{locator} {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {problem}; {hint}")


class MappingError(IngestError):
    """The YAML mapping is missing, malformed or does not fit the target table."""


class SourceFormatError(IngestError):
    """The file cannot be read as the format the mapping declares (empty, corrupt, encoding, delimiter...)."""


class SourceColumnsError(IngestError):
    """The file's columns do not match the mapping (missing, unexpected or duplicated columns)."""


class SourceValueError(IngestError):
    """A value cannot be parsed as its canonical type (number, id, timestamp, vocabulary)."""


class SourceRuleError(IngestError):
    """Parsed values break a rule of the canonical table (nulls in ids, negative prices, future times...)."""
