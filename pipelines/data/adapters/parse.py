"""Parse one source column into one canonical type, or fail naming the column, the first bad line and the fix.

Text (CSV) is parsed strictly: an id is a whole number, a price a plain decimal number, a timestamp one declared
format. Parquet columns arrive typed and are converted only where that loses nothing.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.adapters.errors import SourceValueError

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# ISO 8601 date-time with an optional zone suffix: Z, UTC or an offset such as +02:00.
_ISO = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
_ZONE = r"\s*(?:Z|UTC|[+-]\d{2}:?\d{2})"
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}
_UNIX_MS_THRESHOLD = 10**11  # seconds beyond year 5000: these are milliseconds


@dataclass(frozen=True)
class Where:
    """Where a column's values come from, to name in errors."""

    path: Path
    column: str
    lines: np.ndarray
    locator: str = "line"

    def fail(self, bad: np.ndarray, values: pd.Series, problem: str, hint: str) -> SourceValueError:
        """An error for the rows flagged in ``bad``: the first one's line and value, and how many there are."""
        first = int(np.flatnonzero(bad)[0])
        count = int(bad.sum())
        more = f" ({count} values like it)" if count > 1 else ""
        value = values.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        return SourceValueError(
            self.path,
            f"{value!r} {problem}{more}",
            hint,
            column=self.column,
            line=int(self.lines[first]),
            locator=self.locator,
        )


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values)


def _text(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """(not-null mask, values as stripped text)."""
    present = values.notna().to_numpy()
    return present, values.astype(str).str.strip()


def _arrow_text(values: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """(not-null mask, values as stripped arrow strings): pyarrow's kernels are ~10x faster on 1M rows."""
    present = values.notna().to_numpy()
    try:  # CSV columns hold str or None already
        text = pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        text = pa.array(values.astype(str).where(values.notna(), None), type=pa.string())
    return present, pc.utf8_trim_whitespace(text)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(text, f"^(?:{pattern})$"), False).to_numpy(zero_copy_only=False)


def parse_int(values: pd.Series, where: Where, arrow_type: pa.DataType) -> pd.Series:
    """Whole numbers (ids, ages) into a nullable integer series."""
    if pd.api.types.is_bool_dtype(values) or not (_is_text(values) or pd.api.types.is_numeric_dtype(values)):
        raise where.fail(values.notna().to_numpy(), values, f"has type {values.dtype}", "map an integer column here")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_integer_dtype(values):
        as_float = values.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isnan(as_float) & (np.mod(as_float, 1) != 0)
        if bad.any():
            raise where.fail(bad, values, "is not a whole number", "ids must be integers; fix the source column")
        values = values.astype("Int64")
    if _is_text(values):
        present, text = _arrow_text(values)
        bad = present & ~_matches(text, _INT)
        if bad.any():
            raise where.fail(
                bad, values, "is not an integer", "ids and counts must be whole numbers (no decimals or letters)"
            )
        try:
            numbers = pc.cast(text, pa.int64())
        except pa.ArrowInvalid:
            too_big = np.array([p and abs(int(str(t))) > 2**63 - 1 for p, t in zip(present, values, strict=True)])
            raise where.fail(too_big, values, "does not fit a 64-bit integer", "map a shorter id column") from None
        values = pd.Series(numbers.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), index=values.index)
    bits = arrow_type.bit_width
    if bits < 64:
        low, high = (
            (0, 2**bits - 1) if pa.types.is_unsigned_integer(arrow_type) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        bad = (values.notna() & ((values < low) | (values > high))).to_numpy(dtype=bool)
        if bad.any():
            raise where.fail(
                bad, values, f"does not fit the column's type {arrow_type}", "check the column mapped here"
            )
    return values.astype("Int64")


def parse_float(values: pd.Series, where: Where) -> pd.Series:
    """Plain decimal numbers (prices, amounts); currency symbols and thousands separators are errors."""
    if _is_text(values):
        present, text = _arrow_text(values)
        bad = present & ~_matches(text, _FLOAT)
        if bad.any():
            raise where.fail(
                bad,
                values,
                "is not a plain number",
                "write numbers like 1234.5 (no currency symbol, no thousands separator, '.' as decimal point)",
            )
        values = pd.Series(pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), index=values.index)
    elif not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise where.fail(values.notna().to_numpy(), values, f"has type {values.dtype}", "map a numeric column here")
    out = values.astype("float64")
    bad = np.isinf(out.to_numpy())
    if bad.any():
        raise where.fail(bad, values, "is infinite", "fix the source value")
    return out


def parse_bool(values: pd.Series, where: Where) -> pd.Series:
    """Flags: 1/0, true/false, yes/no (any case)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    present, text = _text(values)
    lowered = text.str.lower()
    bad = present & ~lowered.isin(_TRUE | _FALSE).to_numpy()
    if bad.any():
        raise where.fail(bad, values, "is not a flag", "use 1/0 or true/false")
    return pd.Series(pd.array(np.where(present, lowered.isin(_TRUE), None), dtype="boolean"), index=values.index)


def parse_string(values: pd.Series) -> pd.Series:
    present = values.notna()
    return values.astype(object).where(present, None).map(lambda v: v if v is None else str(v))


def parse_time(values: pd.Series, where: Where, kind: str, zone: str | None, shift_days: float) -> pd.Series:
    """Timestamps into UTC (microseconds). Naive values are read in ``zone``; without one they are an error."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = _localize(values, where, zone, values.notna().to_numpy())
    elif kind in ("unix_s", "unix_ms"):
        parsed = _unix(values, where, kind)
    else:
        present, text = _text(values)
        parsed = _iso(text, present, where, zone) if kind == "iso" else _pattern(text, present, where, kind, zone)
    if shift_days:
        parsed = parsed + pd.Timedelta(days=shift_days)
    return parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def _unix(values: pd.Series, where: Where, kind: str) -> pd.Series:
    numbers = parse_float(values, where)
    arr = numbers.to_numpy()
    if kind == "unix_s":
        bad = ~np.isnan(arr) & (np.abs(arr) >= _UNIX_MS_THRESHOLD)
        if bad.any():
            raise where.fail(bad, values, "is too large for unix seconds", "set timestamp: unix_ms in the mapping")
    return pd.to_datetime(numbers, unit="s" if kind == "unix_s" else "ms", utc=True)


def _iso(text: pd.Series, present: np.ndarray, where: Where, zone: str | None) -> pd.Series:
    full = text.str.fullmatch(f"{_ISO}(?:{_ZONE})?").to_numpy()
    bad = present & ~full
    if bad.any():
        raise where.fail(
            bad,
            text,
            "is not an ISO 8601 timestamp",
            "give every value as YYYY-MM-DD HH:MM:SS[+zone], or declare the file's format under timestamp:",
        )
    aware = present & text.str.contains(f"{_ZONE}$").to_numpy()
    naive = present & ~aware
    if aware.any() and naive.any():
        raise where.fail(
            naive,
            text,
            f"has no time zone while line {int(where.lines[np.flatnonzero(aware)[0]])} has one",
            "export all timestamps the same way (all with a zone, or all without and set timezone: in the mapping)",
        )
    if aware.any():
        normalised = text.str.replace(r"\s*(?:UTC|Z)$", "+00:00", regex=True)
        parsed = pd.to_datetime(normalised.where(present, None), format="ISO8601", utc=True, errors="coerce")
        _no_nat(parsed, present, where, text)
        return parsed
    parsed = pd.to_datetime(text.where(present, None), format="ISO8601", errors="coerce")
    _no_nat(parsed, present, where, text)
    return _localize(parsed, where, zone, present)


def _pattern(text: pd.Series, present: np.ndarray, where: Where, pattern: str, zone: str | None) -> pd.Series:
    parsed = pd.to_datetime(text.where(present, None), format=pattern, errors="coerce", utc="%z" in pattern)
    bad = present & parsed.isna().to_numpy()
    if bad.any():
        raise where.fail(bad, text, f"does not match the timestamp format {pattern!r}", "fix the value or the format")
    return parsed if "%z" in pattern else _localize(parsed, where, zone, present)


def _no_nat(parsed: pd.Series, present: np.ndarray, where: Where, text: pd.Series) -> None:
    bad = present & parsed.isna().to_numpy()
    if bad.any():
        raise where.fail(
            bad, text, "is not a valid date or time", "fix the value (month 1-12, day of month, hour 0-23)"
        )


def _localize(parsed: pd.Series, where: Where, zone: str | None, present: np.ndarray) -> pd.Series:
    if parsed.dt.tz is not None:
        return parsed
    if zone is None:
        raise where.fail(
            present,
            parsed.astype(str),
            "has no time zone",
            "set timezone: (e.g. UTC or Asia/Shanghai) in the mapping, for the column or the whole file",
        )
    try:
        return parsed.dt.tz_localize(zoneinfo.ZoneInfo(zone), ambiguous="raise", nonexistent="raise")
    except (ValueError, TypeError) as exc:  # a wall time skipped or repeated by a DST change
        raise SourceValueError(
            where.path,
            f"a local time does not exist or is ambiguous in {zone} ({exc})",
            "export timestamps in UTC or with their offset",
            column=where.column,
        ) from exc
