"""The bad-input corpus: every kind of broken file or mapping is refused with an error naming the file, the
column or line, and what to do, and the lake populated beforehand stays byte-for-byte the same.

Rule (docs/data.md, "Real formats and ingest"): anything that makes a row's meaning uncertain refuses the whole
file; only two things are dropped and reported instead: a last line cut off by an interrupted export and exact
duplicate lines.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.adapters import (
    IngestError,
    MappingError,
    SourceColumnsError,
    SourceFormatError,
    SourceRuleError,
    SourceValueError,
)
from pipelines.data.ingest import ingest
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings

MAPPINGS = PROJECT_ROOT / "mappings"
DATA = Path(__file__).parent / "data"
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

FIELDS = ["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
          "user_session"]  # fmt: skip
HEADER = ",".join(FIELDS)
BASE = {
    "event_time": "2019-10-01 00:00:00 UTC",
    "event_type": "view",
    "product_id": "44600062",
    "category_id": "2103807459595387724",
    "category_code": "",
    "brand": "shiseido",
    "price": "35.79",
    "user_id": "541312140",
    "user_session": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
}


def _line(**changes: str) -> str:
    return ",".join({**BASE, **changes}[f] for f in FIELDS)


def _rows(*bad: str) -> str:
    """A REES46-format file: header, two good lines, then ``bad`` lines, one more good line."""
    good = [_line(), _line(event_time="2019-10-01 00:00:05 UTC", event_type="cart")]
    return "\n".join([HEADER, *good, *bad, _line(event_time="2019-10-01 00:01:00 UTC", product_id="7")]) + "\n"


@dataclass(frozen=True)
class Files:
    source: Path
    mapping: Path = MAPPINGS / "rees46.yaml"
    table: str = "events"


def _csv(text: str | bytes, name: str = "bad.csv") -> Callable[[Path], Files]:
    def build(tmp: Path) -> Files:
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return Files(path)

    return build


def _mapping(*replacements: tuple[str, str], source: str | None = None, base: str = "rees46.yaml"):
    """A variant of a shipped mapping (text replacements) for a good file."""

    def build(tmp: Path) -> Files:
        text = (MAPPINGS / base).read_text()
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new)
        (tmp / "variant.yaml").write_text(text)
        (tmp / "good.csv").write_text(source if source is not None else _rows())
        return Files(tmp / "good.csv", tmp / "variant.yaml")

    return build


def _parquet(frame: pd.DataFrame, relative: str = "events.parquet") -> Callable[[Path], Files]:
    def build(tmp: Path) -> Files:
        text = (MAPPINGS / "rees46.yaml").read_text().replace("format: csv", "format: parquet")
        (tmp / "parquet.yaml").write_text(text.replace("header: true\n", ""))
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        return Files(path, tmp / "parquet.yaml")

    return build


def _raw_parquet(data: bytes) -> Callable[[Path], Files]:
    def build(tmp: Path) -> Files:
        files = _parquet(_frame())(tmp)
        files.source.write_bytes(data)
        return files

    return build


def _frame(**columns: list) -> pd.DataFrame:
    frame = pd.DataFrame([BASE, {**BASE, "event_time": "2019-10-01 00:00:09 UTC"}])
    for name, values in columns.items():
        frame[name] = values
    return frame


def _taobao(text: str) -> Callable[[Path], Files]:
    def build(tmp: Path) -> Files:
        (tmp / "log.csv").write_text(text)
        return Files(tmp / "log.csv", MAPPINGS / "taobao_style.yaml")

    return build


_VALID_PARQUET = b"PAR1" + b"\x00" * 32 + b"PAR1"

# (id, how to build the input, expected error type, substrings the message must contain)
CASES: list[tuple[str, Callable[[Path], Files], type[IngestError], list[str]]] = [
    # -- the file as a whole
    ("empty file (0 bytes)", _csv(b""), SourceFormatError, ["bad.csv", "0 bytes"]),
    ("only blank lines", _csv("\n\n\n"), SourceFormatError, ["bad.csv", "no content"]),
    ("header only", _csv(HEADER + "\n"), SourceFormatError, ["bad.csv", "header but no data rows"]),
    ("zip archive", _csv(b"PK\x03\x04" + b"\x00" * 40), SourceFormatError, ["zip", "unzip"]),
    ("corrupt gzip", _csv(gzip.compress(_rows().encode())[:30]), SourceFormatError, ["gzip", "re-download"]),
    (
        "non-UTF-8 bytes",
        _csv(_rows(_line(brand="caf\xe9")).encode("latin-1")),
        SourceFormatError,
        ["line 4", "encoding"],
    ),
    ("NUL byte in a line", _csv(_rows(_line(brand="a\x00b"))), SourceFormatError, ["line 4"]),
    ("wrong delimiter", _csv(_rows().replace(",", ";")), SourceFormatError, ["line 1", "delimiter: ';'"]),
    (
        "ragged line (extra field)",
        _csv(_rows(_line() + ",surplus")),
        SourceFormatError,
        ["line 4", "10 fields where 9"],
    ),
    (
        "short line inside the file",
        _csv(_rows(_line().rsplit(",", 2)[0])),
        SourceFormatError,
        ["line 4", "7 fields where 9"],
    ),
    (
        "unclosed quote",
        _csv(_rows('2019-10-01 00:00:07 UTC,view,1,2,"oops,b,1.0,7,s')),
        SourceFormatError,
        ["bad.csv", "quoting"],
    ),
    ("only data line truncated", _csv(HEADER + "\n" + _line()[:40]), SourceFormatError, ["line 2", "truncated"]),
    # -- columns
    (
        "missing column",
        _csv(_rows().replace(",user_session", "").replace(",72d76fde-8bb3-4e00-8c23-a032dfed738c", "")),
        SourceColumnsError,
        ["column 'user_session'", "the file has none"],
    ),
    (
        "extra column",
        _csv(
            "\n".join(line + ",x" for line in _rows().splitlines()).replace("user_session,x", "user_session,discount")
            + "\n"
        ),
        SourceColumnsError,
        ["column 'discount'", "ignore_columns"],
    ),
    (
        "duplicate header name",
        _csv(_rows().replace("category_code", "brand", 1)),
        SourceColumnsError,
        ["column 'brand'", "twice"],
    ),
    # -- values and types
    (
        "wrong type (text id)",
        _csv(_rows(_line(product_id="abc"))),
        SourceValueError,
        ["line 4", "column 'product_id'", "'abc'"],
    ),
    (
        "id that is not an integer",
        _csv(_rows(_line(user_id="541312140.5"))),
        SourceValueError,
        ["line 4", "column 'user_id'", "whole numbers"],
    ),
    (
        "id beyond 64 bits",
        _csv(_rows(_line(category_id="99999999999999999999"))),
        SourceValueError,
        ["line 4", "column 'category_id'", "64-bit"],
    ),
    (
        "price with a currency symbol",
        _csv(_rows(_line(price="$35.79"))),
        SourceValueError,
        ["line 4", "column 'price'", "currency"],
    ),
    (
        "price with a thousands separator",
        _csv(_rows(_line(price='"1,035.79"'))),
        SourceValueError,
        ["line 4", "column 'price'"],
    ),
    ("negative price", _csv(_rows(_line(price="-3.50"))), SourceRuleError, ["line 4", "column 'price'", "negative"]),
    ("null user id", _csv(_rows(_line(user_id=""))), SourceRuleError, ["line 4", "column 'user_id'", "empty"]),
    (
        "unknown event type",
        _csv(_rows(_line(event_type="click"))),
        SourceValueError,
        ["line 4", "column 'event_type'", "'click'", "values"],
    ),
    (
        "unparseable timestamp",
        _csv(_rows(_line(event_time="yesterday"))),
        SourceValueError,
        ["line 4", "column 'event_time'", "ISO 8601"],
    ),
    (
        "impossible date",
        _csv(_rows(_line(event_time="2019-02-30 10:00:00 UTC"))),
        SourceValueError,
        ["line 4", "column 'event_time'", "not a valid date"],
    ),
    (
        "mixed timestamp formats",
        _csv(_rows(_line(event_time="10/01/2019 00:00"))),
        SourceValueError,
        ["line 4", "column 'event_time'"],
    ),
    (
        "naive and aware timestamps mixed",
        _csv(_rows(_line(event_time="2019-10-01 00:00:07"))),
        SourceValueError,
        ["line 4", "no time zone while line 2 has one"],
    ),
    (
        "naive timestamps without a timezone",
        _mapping(("unix_s", "iso"), source="1,10,20,pv,2017-11-25 08:00:00\n", base="taobao_style.yaml"),
        SourceValueError,
        ["column 'timestamp'", "line 1", "timezone"],
    ),
    (
        "future timestamp",
        _csv(_rows(_line(event_time="2031-01-01 00:00:00 UTC"))),
        SourceRuleError,
        ["line 4", "column 'event_time'", "in the future"],
    ),
    (
        "timestamp before 2000",
        _taobao("1,10,20,pv,0\n1,10,20,pv,1511571600\n"),
        SourceRuleError,
        ["line 1", "before 2000"],
    ),
    (
        "unix milliseconds declared as seconds",
        _taobao("1,10,20,pv,1511571600000\n"),
        SourceValueError,
        ["line 1", "unix_ms"],
    ),
    (
        "conflicting duplicate ids",
        _mapping(('event_id: {hash: ["*"]}', "event_id: {hash: [user_id]}")),
        SourceRuleError,
        ["line 3", "repeats line 2", "hash"],
    ),
    # -- parquet
    ("0-byte parquet", _raw_parquet(b""), SourceFormatError, ["events.parquet", "0 bytes"]),
    ("corrupt parquet", _raw_parquet(_VALID_PARQUET), SourceFormatError, ["events.parquet", "corrupt parquet"]),
    ("CSV given to a parquet mapping", _raw_parquet(_rows().encode()), SourceFormatError, ["PAR1", "format: csv"]),
    (
        "parquet given to a CSV mapping",
        lambda tmp: Files(_parquet(_frame())(tmp).source),
        SourceFormatError,
        ["this is a parquet file", "format: parquet"],
    ),
    (
        "parquet id column with fractions",
        _parquet(_frame(user_id=[1.0, 2.5])),
        SourceValueError,
        ["row 2", "column 'user_id'", "whole number"],
    ),
    (
        "partition from the wrong day",
        _parquet(_frame(), "events/ds=2019-10-02/data.parquet"),
        SourceRuleError,
        ["row 1", "claims ds=2019-10-02", "2019-10-01"],
    ),
    # -- the mapping
    (
        "mapping names a missing column",
        _mapping(("user_id: user_id", "user_id: customer_id")),
        SourceColumnsError,
        ["column 'customer_id'", "rees46", "fix the source column name"],
    ),
    (
        "mapping with an unknown key",
        _mapping(("format: csv", "format: csv\nseperator: ';'")),
        MappingError,
        ["variant.yaml", "key 'seperator'", "Extra inputs"],
    ),
    (
        "mapping vocabulary lacks a source value",
        _mapping(("purchase: purchase}", "remove_from_cart: cart}"), source=_rows(_line(event_type="purchase"))),
        SourceValueError,
        ["line 4", "column 'event_type'", "add 'purchase: <canonical value>'"],
    ),
    (
        "mapping leaves a canonical column out",
        _mapping(("    merchant_id: {constant: null}", "")),
        MappingError,
        ["variant.yaml", "merchant_id", "constant: null"],
    ),
    (
        "mapping maps a column the table lacks",
        _mapping(("    price: price", "    price: price\n    colour: brand")),
        MappingError,
        ["variant.yaml", "tables.events.colour", "canonical columns"],
    ),
    ("mapping is not YAML", _mapping(("tables:", "tables: [")), MappingError, ["variant.yaml", "not valid YAML"]),
    (
        "mapping names an unknown time zone",
        _mapping(("header: true", "header: true\ntimezone: Mars/Olympus")),
        MappingError,
        ["key 'timezone'", "IANA"],
    ),
    (
        "mapping names an unknown day time zone",
        _mapping(("header: true", "header: true\nday_timezone: Asia/Peking")),
        MappingError,
        ["key 'day_timezone'", "IANA"],
    ),
    (
        "mapping cuts days in another zone than the lake",  # issue 10 item 9b
        _mapping(("header: true", "header: true\nday_timezone: Asia/Shanghai")),
        MappingError,
        ["variant.yaml", "key 'day_timezone'", "cut in UTC (ingest/span.json)", "fresh one"],
    ),
    (
        "mapping overrides an unknown contract key",  # issue 10 item 10
        _mapping(("header: true", "header: true\ncontracts:\n  events:\n    volume: {colapse_drop: 0.97}")),
        MappingError,
        ["variant.yaml", "key 'contracts.events.volume.colapse_drop'", "collapse_drop"],
    ),
    (
        "mapping constant of the wrong type",
        _mapping(("merchant_id: {constant: null}", "merchant_id: {constant: x}")),
        MappingError,
        ["tables.events.merchant_id.constant", "int64"],
    ),
    (
        "mapping for another table",
        lambda tmp: Files(_mapping()(tmp).source, table="orders"),
        MappingError,
        ["rees46.yaml", "not orders"],
    ),
]


def _lake_digests(lake: Lake) -> dict[str, str]:
    root = Path(lake.root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def populated_lake(settings: Settings, lake: Lake) -> Lake:
    """A lake holding the very days the bad files would land on (2019-10-01, Taobao's 2017-11-25/26)."""
    good = settings.home / "good.csv"
    good.write_text(_rows())
    ingest(settings, good, MAPPINGS / "rees46.yaml", "events", now=NOW)
    ingest(settings, DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml", "events", now=NOW)
    assert lake.partitions("events") == [dt.date(2017, 11, 25), dt.date(2017, 11, 26), dt.date(2019, 10, 1)]
    return lake


def test_the_corpus_has_at_least_25_kinds():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("build", "error", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_the_lake_is_unchanged(
    settings: Settings, populated_lake: Lake, tmp_path: Path, build, error, expected
):
    files = build(tmp_path)
    before = _lake_digests(populated_lake)

    with pytest.raises(error) as raised:
        ingest(settings, files.source, files.mapping, files.table, now=NOW)

    message = str(raised.value)
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    assert raised.value.file in {str(files.source), str(files.mapping)}, "the error names the file"
    assert raised.value.hint, "the error says what to do"
    assert _lake_digests(populated_lake) == before, "nothing in the lake changed"


# -- reported drops: the file lands without those lines, and the report says which and why -------------------
DROPS = [
    (
        "truncated last line (fields missing)",
        _csv(_rows() + _line()[:60]),
        5,
        "of 9 fields and no line terminator",
    ),
    (
        "truncated last line (cut after a delimiter)",
        _csv(_rows() + _line().rsplit(",", 1)[0] + ","),
        5,
        "its last field is empty",
    ),
    (
        "truncated last line (inside a quoted field)",
        _csv(_rows() + _line(brand='"shi')),
        5,
        "ends inside a quoted field",
    ),
    (
        "truncated last line (a value cut short)",
        _taobao("1,10,20,pv,1511571600\n1,10,20,cart,15115"),
        2,
        "truncated last line: no line terminator",
    ),
    ("exact duplicate line", _csv(_rows(_line())), 4, "exact duplicate of line 2"),
]


@pytest.mark.parametrize(("build", "line", "reason"), [d[1:] for d in DROPS], ids=[d[0] for d in DROPS])
def test_cut_last_lines_and_exact_duplicates_are_dropped_and_reported(
    settings: Settings, lake: Lake, tmp_path: Path, build, line: int, reason: str
):
    files = build(tmp_path)

    report = ingest(settings, files.source, files.mapping, files.table, now=NOW)

    assert [(d.line, reason in d.reason) for d in report.drops] == [(line, True)], report.drops
    assert report.rows_written == report.rows_read - 1
    written = pd.concat([lake.read("events", d) for d in report.days["events"]])
    assert len(written) == report.rows_written
