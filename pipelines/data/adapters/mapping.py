"""The YAML mapping that maps a source file onto canonical tables, as a strict typed model.

A mapping declares the file's format and, per target table, where every canonical column comes from: a source
column (with a timestamp format or a value vocabulary), a constant, a hash of source columns, or sessions
derived from inactivity gaps. Adding a new source format means adding a YAML file, not code.
"""

from __future__ import annotations

import codecs
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.data.adapters.contracts import EXPECTATIONS_DIR, check_contract_overrides
from pipelines.data.adapters.errors import MappingError
from pipelines.data.adapters.targets import target_schema

TIMESTAMP_KINDS = ("iso", "unix_s", "unix_ms")
ALL_COLUMNS = "*"  # in `hash:`, every source column of the row


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """Where one canonical column comes from: exactly one of source, constant, hash, sessionize_minutes."""

    source: str | None = None
    constant: str | int | float | bool | None = None
    hash: list[str] | None = Field(None, min_length=1, description="source columns ('*' = all) hashed to an id")
    sessionize_minutes: float | None = Field(None, gt=0, description="new session after this inactivity gap")
    timestamp: str | None = Field(None, description="iso | unix_s | unix_ms | a strftime pattern such as %d/%m/%Y")
    timezone: str | None = Field(None, description="IANA zone of naive timestamps (overrides the mapping's)")
    shift_days: float = Field(0.0, description="added to the parsed time (e.g. a known reporting delay)")
    values: dict[str, str] | None = Field(None, description="source value -> canonical value; others are errors")

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, raw: Any) -> Any:
        # YAML reads `1: view` with an int key; source values are compared as text.
        if isinstance(raw, dict):
            return {str(k): v for k, v in raw.items()}
        return raw

    @field_validator("timestamp")
    @classmethod
    def _known_timestamp(cls, raw: str | None) -> str | None:
        if raw is not None and raw not in TIMESTAMP_KINDS and "%" not in raw:
            raise ValueError(f"expected one of {', '.join(TIMESTAMP_KINDS)} or a strftime pattern like '%Y-%m-%d'")
        return raw

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, raw: str | None) -> str | None:
        return _check_zone(raw)

    @model_validator(mode="after")
    def _one_origin(self) -> ColumnSpec:
        given = [k for k in ("source", "constant", "hash", "sessionize_minutes") if k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of source: COLUMN, constant: VALUE (or null), hash: [COLUMNS], "
                f"sessionize_minutes: N (got {', '.join(given) or 'none'})"
            )
        if self.source is None and (self.timestamp or self.values or self.timezone or self.shift_days):
            raise ValueError("timestamp, timezone, shift_days and values apply only to a column with source:")
        return self

    @property
    def origin(self) -> str:
        return next(k for k in ("source", "constant", "hash", "sessionize_minutes") if k in self.model_fields_set)


class Mapping(_Strict):
    """A whole mapping file (see mappings/*.yaml and docs/data.md, "Real formats and ingest")."""

    name: str
    description: str = ""
    format: Literal["csv", "parquet"]
    header: bool = True
    column_names: list[str] | None = Field(None, description="names of a headerless CSV's columns, in order")
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    null_values: list[str] = Field(default_factory=lambda: [""], description="texts read as null")
    ignore_columns: list[str] = Field(default_factory=list, description="source columns deliberately not used")
    timezone: str | None = Field(None, description="IANA zone of naive timestamps, e.g. UTC or Asia/Shanghai")
    day_timezone: str = Field("UTC", description="IANA zone whose midnights cut the source's days (partitions)")
    contracts: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="per table, volume/drift keys overriding expectations/<table>.json"
    )
    tables: dict[str, dict[str, ColumnSpec]] = Field(min_length=1)

    @field_validator("tables", mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        # `user_id: uid` is short for `user_id: {source: uid}`.
        if not isinstance(raw, dict):
            return raw
        return {
            table: {col: {"source": spec} if isinstance(spec, str) else spec for col, spec in columns.items()}
            if isinstance(columns, dict)
            else columns
            for table, columns in raw.items()
        }

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, raw: str) -> str:
        try:
            codecs.lookup(raw)
        except LookupError as exc:
            raise ValueError("expected a Python codec name such as utf-8, latin-1 or cp1252") from exc
        return raw

    @field_validator("timezone", "day_timezone")
    @classmethod
    def _known_zone(cls, raw: str | None) -> str | None:
        return _check_zone(raw)

    @model_validator(mode="after")
    def _names_fit_header(self) -> Mapping:
        if self.format == "csv" and not self.header and not self.column_names:
            raise ValueError("a CSV without a header needs column_names: [NAME, ...] in file order")
        if self.column_names and (self.header or self.format == "parquet"):
            raise ValueError("column_names is only for a CSV with header: false (otherwise names come from the file)")
        if self.column_names and len(set(self.column_names)) != len(self.column_names):
            raise ValueError("column_names must be distinct")
        return self

    def source_columns(self) -> set[str]:
        """Every source column the mapping reads (hash '*' excluded)."""
        used: set[str] = set()
        for columns in self.tables.values():
            for spec in columns.values():
                if spec.source is not None:
                    used.add(spec.source)
                used.update(c for c in spec.hash or [] if c != ALL_COLUMNS)
        return used


def _check_zone(raw: str | None) -> str | None:
    if raw is None:
        return raw
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("expected an IANA time zone such as UTC, Europe/Berlin or Asia/Shanghai") from exc
    return raw


def load_mapping(path: Path) -> Mapping:
    """Read and check a mapping file against the target tables' schemas; raise MappingError when it is off."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MappingError(path, "mapping file not found", "pass an existing file (see mappings/)") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(
            path, f"not valid YAML{where}: {problem}", "fix the syntax (see mappings/rees46.yaml)"
        ) from exc
    if not isinstance(raw, dict):
        raise MappingError(path, "expected a mapping of keys (name, format, tables, ...)", "see mappings/rees46.yaml")
    try:
        mapping = Mapping(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        hint = "fix that key; the expected form is in docs/data.md"
        if err["type"] == "extra_forbidden":
            model = Mapping if len(err["loc"]) == 1 else ColumnSpec
            hint = f"the keys allowed there are {', '.join(model.model_fields)}"
        raise MappingError(path, f"key '{key}': {err['msg']}{more}", hint) from exc
    _check_tables(path, mapping)
    check_contract_overrides(path, mapping.contracts, EXPECTATIONS_DIR)
    return mapping


def _check_tables(path: Path, mapping: Mapping) -> None:
    """Every canonical column of every target table is declared; nothing else is; sources are known."""
    for table, columns in mapping.tables.items():
        schema = target_schema(table, where=path)
        canonical = set(schema.names)
        unknown = sorted(set(columns) - canonical)
        if unknown:
            raise MappingError(
                path,
                f"key 'tables.{table}.{unknown[0]}': not a column of table {table}",
                f"the canonical columns are {', '.join(schema.names)}",
            )
        missing = [c for c in schema.names if c not in columns]
        if missing:
            raise MappingError(
                path,
                f"key 'tables.{table}': canonical column(s) {', '.join(missing)} not mapped",
                f"declare each, e.g. '{missing[0]}: {{constant: null}}' if the source has no such data",
            )
        for column, spec in columns.items():
            if spec.sessionize_minutes is not None and table != "events":
                raise MappingError(
                    path, f"key 'tables.{table}.{column}': sessionize_minutes", "sessions exist only in events"
                )
            if spec.timestamp and not pa.types.is_timestamp(schema.field(column).type):
                raise MappingError(
                    path,
                    f"key 'tables.{table}.{column}.timestamp': {column} is not a time column",
                    "remove the timestamp key there",
                )
    if mapping.column_names:
        known = set(mapping.column_names)
        for name in sorted(mapping.source_columns() - known):
            raise MappingError(
                path,
                f"a column refers to source column '{name}', which is not in column_names",
                f"use one of {', '.join(mapping.column_names)}",
            )
