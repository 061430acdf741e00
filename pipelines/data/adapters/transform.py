"""Apply a mapping to a read source: one typed canonical frame per target table, rows in source order.

Each frame carries the source line of every row in the extra column ``_line`` (for errors and a stable sort);
the ingest removes it before writing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.adapters.errors import MappingError, SourceValueError
from pipelines.data.adapters.mapping import ALL_COLUMNS, ColumnSpec, Mapping
from pipelines.data.adapters.parse import Where, parse_bool, parse_float, parse_int, parse_string, parse_time
from pipelines.data.adapters.source import RawTable
from pipelines.data.adapters.targets import target_schema

LINE = "_line"
_SEP = "\x1f"  # unit separator: cannot occur in the joined CSV fields it separates


def map_table(raw: RawTable, mapping: Mapping, mapping_path: Path, table: str) -> pd.DataFrame:
    """The canonical frame of ``table`` (plus ``_line``) from ``raw``, typed as the table's schema."""
    schema = target_schema(table, where=mapping_path)
    columns = mapping.tables[table]
    out = pd.DataFrame(index=raw.frame.index)
    later: list[str] = []
    for field in schema:
        spec = columns[field.name]
        if spec.origin == "sessionize_minutes":
            later.append(field.name)  # needs user_id and event_time first
            continue
        out[field.name] = _column(raw, mapping, mapping_path, table, field, spec)
    for name in later:
        out[name] = _sessions(out, columns[name].sessionize_minutes or 0.0)
    out[LINE] = raw.lines
    return out[[*schema.names, LINE]]


def _column(
    raw: RawTable, mapping: Mapping, mapping_path: Path, table: str, field: pa.Field, spec: ColumnSpec
) -> pd.Series:
    n = len(raw.frame)
    if spec.origin == "source":
        assert spec.source is not None
        values = raw.frame[spec.source]
        where = Where(raw.path, spec.source, raw.lines, raw.locator)
        if spec.values is not None:
            values = _vocabulary(values, spec.values, where, mapping, table, field.name)
        return _typed(values, field, where, spec, mapping)
    if spec.origin == "hash":
        return _hash(raw, spec.hash or [], field)
    # A constant (null when the source has no such data) goes through the same parsers as the file's values.
    key = f"tables.{table}.{field.name}.constant"
    where = Where(mapping_path, key, np.zeros(1, dtype=np.int64))
    one = pd.Series([None if spec.constant is None else str(spec.constant)], dtype=object)
    try:
        value = _typed(one, field, where, spec, mapping)
    except SourceValueError as exc:
        raise MappingError(mapping_path, f"key '{key}': {exc.problem}", f"give a value of type {field.type}") from exc
    return pd.Series([value.iloc[0]] * n, index=raw.frame.index, dtype=value.dtype)


def _typed(values: pd.Series, field: pa.Field, where: Where, spec: ColumnSpec, mapping: Mapping) -> pd.Series:
    kind = field.type
    if pa.types.is_timestamp(kind):
        return parse_time(values, where, spec.timestamp or "iso", spec.timezone or mapping.timezone, spec.shift_days)
    if pa.types.is_integer(kind):
        return parse_int(values, where, kind)
    if pa.types.is_floating(kind):
        return parse_float(values, where)
    if pa.types.is_boolean(kind):
        return parse_bool(values, where)
    return parse_string(values)


def _vocabulary(
    values: pd.Series, vocabulary: dict[str, str], where: Where, mapping: Mapping, table: str, column: str
) -> pd.Series:
    text = values.map(lambda v: v if v is None or pd.isna(v) else str(v).strip())
    present = text.notna().to_numpy()
    unknown = present & ~text.isin(list(vocabulary)).to_numpy()
    if unknown.any():
        value = text[unknown].iloc[0]
        raise where.fail(
            unknown,
            values,
            f"is not in the mapping's vocabulary for {table}.{column} ({', '.join(sorted(vocabulary))})",
            f"add '{value}: <canonical value>' under tables.{table}.{column}.values in mapping {mapping.name!r}",
        )
    return text.map(vocabulary)


def _hash(raw: RawTable, columns: list[str], field: pa.Field) -> pd.Series:
    """A deterministic id from source values: the same row always gets the same id, on every run."""
    names = list(raw.frame.columns) if columns == [ALL_COLUMNS] else columns
    parts = [raw.frame[c].astype(str).where(raw.frame[c].notna(), "\x00") for c in names]
    joined = parts[0].str.cat(parts[1:], sep=_SEP) if len(parts) > 1 else parts[0]
    digests = [hashlib.blake2b(s.encode("utf-8"), digest_size=16).digest() for s in joined.tolist()]
    if pa.types.is_integer(field.type):
        # 63 bits of the digest: a positive int64.
        ints = [int.from_bytes(d[:8], "big") >> 1 for d in digests]
        return pd.Series(ints, index=raw.frame.index, dtype="Int64")
    return pd.Series([d.hex() for d in digests], index=raw.frame.index, dtype=object)


def _sessions(out: pd.DataFrame, gap_minutes: float) -> pd.Series:
    """Sessions per user: a new one starts after ``gap_minutes`` without events; its id hashes user and start."""
    order = out.sort_values(["user_id", "event_time"], kind="stable").index
    users = out.loc[order, "user_id"]
    times = out.loc[order, "event_time"]
    gap = (times - times.shift()) > pd.Timedelta(minutes=gap_minutes)
    new = ((users != users.shift()).fillna(True) | gap).astype(bool)
    # Hash each session once (user and start time), then give every event its session's id.
    # Start times as integer microseconds: formatting a million timestamps as text costs seconds.
    starts = pd.DataFrame({"user": users[new].astype(str), "start": times[new].astype("int64").astype(str)})
    session_ids = [
        hashlib.blake2b(f"{u}{_SEP}{t}".encode(), digest_size=16).hexdigest()
        for u, t in zip(starts["user"].tolist(), starts["start"].tolist(), strict=True)
    ]
    number = new.cumsum().to_numpy() - 1
    ids = pd.Series(np.asarray(session_ids, dtype=object)[number], index=order, dtype=object)
    ids[(users.isna() | times.isna()).to_numpy()] = None
    return ids.reindex(out.index)
