"""Read a source file (CSV, gzip'ed or not, or parquet) into a frame of its own columns, with line numbers.

Everything that makes the file unreadable is an error naming the file and line; two things are dropped and
reported instead: a last line cut off mid-record (no line terminator, too few fields) and exact duplicates of an
earlier line (a log delivered twice). Blank lines are skipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.adapters.errors import SourceColumnsError, SourceFormatError
from pipelines.data.adapters.mapping import Mapping

Progress = Callable[[str, int, int], None]  # (stage, done, total)
_OTHER_DELIMITERS = (";", "\t", "|", ",")
_PROGRESS_STEPS = 100  # callbacks per file, at most


@dataclass(frozen=True)
class Drop:
    """A source line left out of the ingest, and why."""

    line: int
    reason: str


@dataclass
class RawTable:
    """A source file's rows as read: ``lines[i]`` is where row ``i`` starts (a CSV line or a parquet row)."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray
    locator: str = "line"
    unterminated_last: int | None = None  # a kept last line that had no line terminator
    drops: list[Drop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop_lines(self, lines: list[int], reason: str) -> None:
        """Leave these source lines out, reporting why."""
        keep = ~np.isin(self.lines, lines)
        self.frame = self.frame.loc[keep].reset_index(drop=True)
        self.lines = self.lines[keep]
        self.drops.extend(Drop(int(n), reason) for n in lines)


def read_source(path: Path, mapping: Mapping, on_progress: Progress | None = None) -> RawTable:
    """Read ``path`` as ``mapping`` declares; check its columns against what the mapping reads."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceFormatError(path, "file not found", "check the --source path") from exc
    if not data:
        raise SourceFormatError(path, "the file is empty (0 bytes)", "re-export it; an empty export lands nothing")
    raw = _read_parquet(path, data) if mapping.format == "parquet" else _read_csv(path, data, mapping, on_progress)
    _check_columns(raw, mapping)
    _drop_exact_duplicates(raw)
    return raw


# -- CSV -----------------------------------------------------------------------------------------------------
def _read_csv(path: Path, data: bytes, mapping: Mapping, on_progress: Progress | None) -> RawTable:
    notes: list[str] = []
    data = _decompress(path, data, notes)
    text = _decode(path, data, mapping.encoding, notes)
    if not text.strip():
        raise SourceFormatError(path, "the file has no content (only blank lines)", "re-export it with its rows")
    terminated = text.endswith(("\n", "\r"))
    total = text.count("\n") + 1
    every = max(1_000, total // _PROGRESS_STEPS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=mapping.delimiter, strict=True)
    records: list[list[str]] = []
    starts: list[int] = []
    names: list[str] | None = None if mapping.header else list(mapping.column_names or [])
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record or record == [""]:
                continue  # a blank line
            if names is None:
                names = _header(path, record, mapping)
                continue
            records.append(record)
            starts.append(start)
            if on_progress and len(records) % every == 0:
                on_progress("read", previous_end, total)
    except csv.Error as exc:
        if not terminated and "end of data" in str(exc) and names is not None and records:
            # An open quote at the very end: the last record was cut off. Reported and dropped below.
            cut = Drop(previous_end + 1, "truncated last line: it ends inside a quoted field")
        else:
            unclosed = "end of data" in str(exc)
            raise SourceFormatError(
                path,
                "a quoted field opened here is never closed" if unclosed else f"not readable as CSV ({exc})",
                'fix the quoting of that line (a quote inside a field is written twice: "")',
                line=previous_end + 1 if unclosed else reader.line_num,
            ) from exc
    else:
        cut = None
    if names is None or not records:
        raise SourceFormatError(
            path, "the file has a header but no data rows" if names else "no data rows", "export the rows too"
        )
    if on_progress:
        on_progress("read", total, total)
    raw = RawTable(path=path, frame=pd.DataFrame(), lines=np.array([], dtype=np.int64), notes=notes)
    if cut is not None:
        raw.drops.append(cut)
        terminated = True  # the cut record is gone; the rest ended with a terminator
    _sniff_delimiter(path, records[0] if not mapping.header else names, mapping, starts[0])
    records, starts = _check_field_counts(raw, records, starts, names, terminated)
    frame = pd.DataFrame(records, columns=names, dtype=object)
    nulls = set(mapping.null_values)
    raw.frame = frame.mask(frame.isin(nulls), None) if nulls else frame
    raw.lines = np.asarray(starts, dtype=np.int64)
    return raw


def _decompress(path: Path, data: bytes, notes: list[str]) -> bytes:
    if data[:4] == b"PAR1":
        raise SourceFormatError(path, "this is a parquet file", "use a mapping with format: parquet")
    if data[:4] == b"PK\x03\x04":
        raise SourceFormatError(path, "this is a zip archive", "unzip it and ingest the CSV inside")
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        out = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceFormatError(path, f"a gzip file that cannot be decompressed ({exc})", "re-download it") from exc
    notes.append("the file is gzip-compressed; read it decompressed")
    return out


def _decode(path: Path, data: bytes, encoding: str, notes: list[str]) -> str:
    if data.startswith(b"\xef\xbb\xbf") and encoding.replace("_", "-").lower() in {"utf-8", "utf8"}:
        data = data[3:]
        notes.append("a UTF-8 byte order mark (BOM) was skipped")
    nul = data.find(b"\x00")
    if nul >= 0 and encoding.replace("_", "-").lower() in {"utf-8", "utf8", "latin-1", "latin1", "cp1252", "ascii"}:
        # Text exports never hold NUL bytes: this is binary damage, or UTF-16 read as 8-bit text.
        raise SourceFormatError(
            path,
            "a NUL byte (0x00) in the text",
            "if the file is UTF-16, set encoding: utf-16 in the mapping; otherwise re-export it",
            line=data[:nul].count(b"\n") + 1,
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceFormatError(
            path,
            f"byte {data[exc.start : exc.start + 1]!r} is not valid {encoding}",
            "re-export the file as UTF-8, or set encoding: (e.g. latin-1 or cp1252) in the mapping",
            line=line,
        ) from exc


def _header(path: Path, record: list[str], mapping: Mapping) -> list[str]:
    names = [name.strip() for name in record]
    seen: set[str] = set()
    for name in names:
        if not name:
            raise SourceFormatError(path, "the header has an empty column name", "name every column", line=1)
        if name in seen:
            raise SourceColumnsError(path, "the header names this column twice", "rename one of them", column=name)
        seen.add(name)
    return names


def _sniff_delimiter(path: Path, first: list[str], mapping: Mapping, line: int) -> None:
    """One field that holds another delimiter: the mapping's delimiter is the wrong one."""
    if len(first) != 1:
        return
    for other in _OTHER_DELIMITERS:
        if other != mapping.delimiter and other in first[0]:
            raise SourceFormatError(
                path,
                f"the line has a single field containing {other!r}: the file is delimited by {other!r}, "
                f"not {mapping.delimiter!r}",
                f"set delimiter: {other!r} in the mapping (or re-export with {mapping.delimiter!r})",
                line=1 if mapping.header else line,
            )


def _check_field_counts(
    raw: RawTable, records: list[list[str]], starts: list[int], names: list[str], terminated: bool
) -> tuple[list[list[str]], list[int]]:
    width = len(names)
    bad = [i for i, r in enumerate(records) if len(r) != width]
    last = records[-1]
    if not terminated and (len(last) < width or (len(last) == width and last[-1] == "")):
        # Cut off mid-record, as exports interrupted in transfer are: report and drop, never keep. An empty
        # last field counts too: the cut may have fallen right after the delimiter.
        raw.drops.append(
            Drop(starts[-1], f"truncated last line: {len(last)} of {width} fields and no line terminator")
            if len(last) < width
            else Drop(starts[-1], "truncated last line: its last field is empty and it has no line terminator")
        )
        records, starts = records[:-1], starts[:-1]
        bad = [i for i in bad if i < len(records)]
        if not records:
            line = raw.drops[-1].line
            raise SourceFormatError(raw.path, "its only data line is truncated", "re-export the file", line=line)
    elif not terminated:
        raw.unterminated_last = starts[-1]
    if bad:
        i = bad[0]
        raise SourceFormatError(
            raw.path,
            f"{len(records[i])} fields where {width} are expected ({', '.join(names)})"
            + (f" (and {len(bad) - 1} more such lines)" if len(bad) > 1 else ""),
            "check the delimiter and quoting of that line; fix or remove it",
            line=starts[i],
        )
    return records, starts


# -- parquet -------------------------------------------------------------------------------------------------
def _read_parquet(path: Path, data: bytes) -> RawTable:
    if data[:4] != b"PAR1":
        raise SourceFormatError(path, "not a parquet file (no PAR1 magic bytes)", "use a mapping with format: csv")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise SourceFormatError(
            path, f"corrupt parquet ({str(exc).strip()})", "re-export or re-download the file"
        ) from exc
    if table.num_rows == 0:
        raise SourceFormatError(path, "the parquet file has no rows", "export the rows too")
    frame = table.to_pandas()  # native dtypes: the parsers accept numbers and timestamps as they are
    return RawTable(path=path, frame=frame, lines=np.arange(1, len(frame) + 1, dtype=np.int64), locator="row")


# -- both ----------------------------------------------------------------------------------------------------
def _check_columns(raw: RawTable, mapping: Mapping) -> None:
    present = list(raw.frame.columns)
    missing = sorted(mapping.source_columns() - set(present))
    if missing:
        raise SourceColumnsError(
            raw.path,
            f"the mapping {mapping.name!r} reads this column but the file has none (it has {', '.join(present)})",
            "fix the source column name in the mapping, or ingest the file the mapping was written for",
            column=missing[0],
        )
    extra = [c for c in present if c not in mapping.source_columns() and c not in mapping.ignore_columns]
    if extra:
        raise SourceColumnsError(
            raw.path,
            f"unexpected column(s) {', '.join(extra)}: the mapping {mapping.name!r} neither maps nor ignores them",
            "map them, or list them under ignore_columns in the mapping if the format changed on purpose",
            column=extra[0],
        )


def _drop_exact_duplicates(raw: RawTable) -> None:
    keys = pd.util.hash_pandas_object(raw.frame.astype(str), index=False).to_numpy()
    dup = pd.Series(keys).duplicated(keep="first").to_numpy()
    if not dup.any():
        return
    first_line: dict[int, int] = {}
    for key, line in zip(keys[~dup].tolist(), raw.lines[~dup].tolist(), strict=True):
        first_line.setdefault(key, line)
    raw.drops.extend(
        Drop(line, f"exact duplicate of {raw.locator} {first_line[key]}")
        for key, line in zip(keys[dup].tolist(), raw.lines[dup].tolist(), strict=True)
    )
    raw.frame = raw.frame.loc[~dup].reset_index(drop=True)
    raw.lines = raw.lines[~dup]
