"""What ``mlctl ingest`` records about what it landed: the span per table (read by the DAGs to schedule over the
data), the source's label delay (read by ``mlctl check``), the contract overrides of a mapping, and summary lines
that count each table on its own."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.data.adapters import MappingError
from pipelines.data.ingest import ingest
from pipelines.data.landed import (
    OVERRIDES_KEY,
    SPAN_KEY,
    contract_overrides,
    day_timezone,
    landed_days,
    landed_span,
    source_label_delay_days,
)
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings
from tests.conftest import SHARED_DATA

MAPPINGS = PROJECT_ROOT / "mappings"
DATA = Path(__file__).parent / "data"
NOV25, NOV26 = dt.date(2017, 11, 25), dt.date(2017, 11, 26)


def _log(path: Path, rows: list[tuple[int, str, int]]) -> Path:
    """A headerless Taobao-style log: (user, behaviour, unix seconds) per line."""
    path.write_text("".join(f"{user},{10 + i},20,{kind},{ts}\n" for i, (user, kind, ts) in enumerate(rows)))
    return path


def _variant(tmp: Path, base: str, extra: str) -> Path:
    """A shipped mapping with top-level keys added."""
    path = tmp / f"variant-{base}"
    path.write_text((MAPPINGS / base).read_text() + extra)
    return path


def test_a_fresh_lake_has_no_span_and_days_in_utc(lake: Lake) -> None:
    """issue 10 item 1: nothing landed yet is said as None, not as an empty span."""
    assert landed_span(lake) is None and landed_days(lake) is None
    assert source_label_delay_days(lake) is None
    assert day_timezone(lake) == "UTC" and lake.day_zone == "UTC"


def test_ingest_records_the_span_it_landed_and_a_later_file_widens_it(settings: Settings, lake: Lake) -> None:
    """issue 10 item 1: the span per table is in ingest/span.json, from the partitions present in the lake."""
    ingest(settings, DATA / "taobao_style.csv", MAPPINGS / "taobao_style.yaml", "events")

    assert landed_span(lake) == {"events": (NOV25, NOV26)}
    assert lake.read_json(SPAN_KEY) == {
        "tables": {"events": {"first": "2017-11-25", "last": "2017-11-26", "days": 2}},
        "day_timezone": "UTC",
        "label_delay_days": None,
    }

    dec3 = int(dt.datetime(2017, 12, 3, 12, tzinfo=dt.UTC).timestamp())
    ingest(settings, _log(settings.home / "dec3.csv", [(7, "pv", dec3)]), MAPPINGS / "taobao_style.yaml", "events")

    assert landed_span(lake) == {"events": (NOV25, dt.date(2017, 12, 3))}
    assert lake.read_json(SPAN_KEY)["tables"]["events"]["days"] == 3, "days counts partitions, not the calendar"
    assert landed_days(lake) == (NOV25, dt.date(2017, 12, 3))


def test_an_orders_file_records_both_tables_and_the_label_delay_of_its_source(settings: Settings, lake: Lake) -> None:
    """issue 10 items 1 and 6: labels 30 days after purchase are recorded (span and per-day lineage), so a spec
    whose label.delay_days is shorter can be told before it trains on 0 positives."""
    ingest(settings, DATA / "fraud_ecommerce.csv", MAPPINGS / "fraud_ecommerce.yaml", "orders")

    assert landed_span(lake) == {
        "order_labels": (dt.date(2015, 3, 31), dt.date(2015, 4, 4)),
        "orders": (dt.date(2015, 3, 1), dt.date(2015, 3, 5)),
    }
    assert landed_days(lake) == (dt.date(2015, 3, 1), dt.date(2015, 4, 4))
    assert source_label_delay_days(lake) == {"max": 30.0, "median": 30.0}
    day = lake.read_json("ingest/order_labels/ds=2015-04-02/lineage.json")
    assert day["rows"] == 3 and day["label_delay_days"] == {"max": 30.0, "median": 30.0}
    assert "label_delay_days" not in lake.read_json("ingest/orders/ds=2015-03-03/lineage.json")


def test_the_summary_counts_each_table_against_the_source_rows(settings: Settings) -> None:
    """issue 10 item 9c: an orders file with labels prints one line per table, never '(16 of 8 rows)'."""
    from pipelines.cli import app

    args = [
        "ingest",
        "--source",
        str(DATA / "fraud_ecommerce.csv"),
        "--mapping",
        str(MAPPINGS / "fraud_ecommerce.yaml"),
    ]
    result = CliRunner().invoke(app, [*args, "--table", "orders"], env=settings.environment())

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "orders: 8 rows over 5 days (2015-03-01 .. 2015-03-05) from 8 source rows" in text
    assert "order_labels: 8 rows over 5 days (2015-03-31 .. 2015-04-04) from 8 source rows" in text
    assert "16 of 8" not in text
    assert "labels arrive 30 days after purchase" in text
    assert "2015-03-02" not in text, "the compact table shows first and last days, not one row per day"

    verbose = CliRunner().invoke(app, [*args, "--table", "orders", "--verbose"], env=settings.environment())
    assert verbose.exit_code == 0 and "2015-03-02" in verbose.output


def test_a_mapping_sets_contract_thresholds_per_table_merged_in_the_lake(
    settings: Settings, lake: Lake, tmp_path: Path
) -> None:
    """issue 10 item 10: a source with bursts tunes the volume contract of a feature table in its mapping."""
    first = _variant(
        tmp_path,
        "taobao_style.yaml",
        "contracts:\n  user_features:\n    volume: {collapse_drop: 0.97, min_history: 7}\n"
        "  events:\n    drift: {columns: [{column: price, threshold: 0.5}]}\n",
    )
    ingest(settings, DATA / "taobao_style.csv", first, "events")
    second = _variant(tmp_path, "rees46.yaml", "contracts:\n  user_features:\n    volume: {min_history: 10}\n")
    ingest(settings, SHARED_DATA / "rees46_sample.csv", second, "events")

    assert (
        contract_overrides(lake)
        == lake.read_json(OVERRIDES_KEY)
        == {
            "user_features": {"volume": {"collapse_drop": 0.97, "min_history": 10}},
            "events": {"drift": {"columns": [{"column": "price", "threshold": 0.5}]}},
        }
    )
    # The validation reads them over the suites' values.
    from pipelines.validation.contracts import load_contract, load_contract_overrides

    tuned = load_contract(settings.expectations_dir, "user_features", load_contract_overrides(lake))
    assert tuned.volume is not None and (tuned.volume.collapse_drop, tuned.volume.min_history) == (0.97, 10)
    drift = load_contract(settings.expectations_dir, "events", load_contract_overrides(lake)).drift
    assert drift is not None and {c.column: c.threshold for c in drift.columns}["price"] == 0.5


@pytest.mark.parametrize(
    ("contracts", "expected"),
    [
        ("  events:\n    volume: {colapse_drop: 0.97}\n", ["contracts.events.volume.colapse_drop", "collapse_drop"]),
        ("  event:\n    volume: {mad_k: 8}\n", ["contracts.event", "no expectation suite", "events"]),
        ("  events:\n    volume: {window_days: 7.5}\n", ["contracts.events.volume.window_days", "whole number"]),
        ("  events:\n    volume: {severity: fatal}\n", ["contracts.events.volume.severity", "critical, warning"]),
        ("  events:\n    volumes: {mad_k: 8}\n", ["contracts.events.volumes", "volume or drift"]),
        ("  follows:\n    drift: {bins: 5}\n", ["contracts.follows.drift", "declares no drift"]),
        ("  events:\n    drift: {columns: [{column: brand}]}\n", ["contracts.events.drift.columns.0", "price"]),
        (
            "  events:\n    drift: {columns: [{column: price, kind: categorical}]}\n",
            ["contracts.events.drift.columns.0.kind", "method, threshold, severity"],
        ),
    ],
)
def test_unknown_contract_keys_are_refused_naming_the_key(
    settings: Settings, lake: Lake, tmp_path: Path, contracts: str, expected: list[str]
) -> None:
    """issue 10 item 10: a typo in an override is refused, not silently ignored by the validation."""
    mapping = _variant(tmp_path, "taobao_style.yaml", "contracts:\n" + contracts)

    with pytest.raises(MappingError) as raised:
        ingest(settings, DATA / "taobao_style.csv", mapping, "events")

    for part in expected:
        assert part in str(raised.value), str(raised.value)
    assert lake.partitions("events") == [] and lake.read_json(SPAN_KEY) is None
