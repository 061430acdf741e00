"""Contracts tunable per source (issue 10 item 10) and validation of any subset of the daily tables (item 5).

A source's mapping may carry ``contracts:``; ``mlctl ingest`` writes it to the lake as ``contracts/overrides.json``
and every validation merges it over the suite's ``meta``.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.data.derived_dimensions import derive_users_and_follows
from pipelines.data.landed import OVERRIDES_KEY
from pipelines.lake import Lake, PartitionNotFound
from pipelines.settings import Settings
from pipelines.validation.contracts import (
    ContractOverrideError,
    apply_overrides,
    load_contract,
    load_contract_overrides,
)
from pipelines.validation.daily import NoTablesForDay, validate_day
from pipelines.validation.quarantine import ValidationFailed
from pipelines.validation.volume import check_volume
from tests.test_contracts import START, day_tables, publish, validated_history  # noqa: F401 (a fixture)

FEATURE_TABLE, FEATURE_SUITE = "features/user_behavior", "user_features"


@pytest.fixture
def expectations_dir(settings: Settings) -> Path:
    return settings.expectations_dir


@pytest.fixture
def history(lake: Lake, validated_history: Path) -> dt.date:  # noqa: F811
    """Five clean validated days of every dimension and events; returns the next day."""
    shutil.copytree(validated_history, lake.root, dirs_exist_ok=True)
    return START + dt.timedelta(days=5)


# -- a raw table ------------------------------------------------------------------------------------------------
def test_a_sources_override_turns_a_raw_tables_collapse_into_a_warning(
    lake: Lake, expectations_dir: Path, history: dt.date
) -> None:
    """issue 10 item 10: a source whose quiet days are genuine tunes the events contract, not the suite."""
    publish(lake, history, day_tables(history, n_events=20))
    lake.write_json(OVERRIDES_KEY, {"events": {"volume": {"collapse_severity": "warning", "window_days": 7}}})

    results = validate_day(lake, history, expectations_dir)

    (warning,) = [w for w in results["events"]["warnings"] if "row_count" in w]
    assert "collapse: 20 rows against a median of 300" in warning
    assert not lake.is_quarantined("events", history)
    report = lake.read_json(f"validation/events/ds={history.isoformat()}/report.json")
    (volume,) = [c for c in report["checks"] if c["expectation"] == "expect_table_row_count_to_match_history"]
    assert volume["expected"]["window_days"] == 7 and volume["severity"] == "warning"


def test_without_an_override_the_raw_collapse_stays_critical(lake: Lake, expectations_dir: Path, history: dt.date):
    """issue 10 item 10: overrides of another table leave the events contract as the suite says."""
    publish(lake, history, day_tables(history, n_events=20))
    lake.write_json(OVERRIDES_KEY, {"user_features": {"volume": {"collapse_drop": 0.99}}})

    with pytest.raises(ValidationFailed, match="collapse: 20 rows against a median of 300"):
        validate_day(lake, history, expectations_dir)


def test_an_unknown_override_key_names_the_table_and_the_key(
    lake: Lake, expectations_dir: Path, history: dt.date
) -> None:
    """issue 10 item 10: a typo is an error, never silently ignored."""
    publish(lake, history, day_tables(history))
    lake.write_json(OVERRIDES_KEY, {"events": {"volume": {"colapse_drop": 0.97}}})

    with pytest.raises(ContractOverrideError, match=r"events\.volume\.colapse_drop: unknown key.*collapse_drop"):
        validate_day(lake, history, expectations_dir)


# -- a feature table after a burst -----------------------------------------------------------------------------
def _feature_history(lake: Lake, counts: list[int], last: dt.date) -> None:
    """Partitions of the user feature table with these row counts, on the days before ``last``."""
    for back, n in enumerate(reversed(counts), start=1):
        lake.write(FEATURE_TABLE, last - dt.timedelta(days=back), pd.DataFrame({"user_id": np.arange(n)}))


def test_a_feature_tables_drop_after_a_burst_is_a_warning_and_tunable(settings: Settings, lake: Lake) -> None:
    """issue 10 item 10: 'collapse: 21 rows against a median of 230' quarantined a real day of a feature table.

    The users active in the window rose with a campaign and fell back when it ended; the raw events had already
    passed their own contract. A drop of a derived table is a warning by default, and the source can widen it.
    """
    day = dt.date(2017, 12, 3)
    _feature_history(lake, [40, 230, 260, 240, 230, 235, 210, 35, 50], day)  # a burst, then quiet

    default = load_contract(settings.expectations_dir, FEATURE_SUITE, load_contract_overrides(lake), FEATURE_TABLE)
    judged = check_volume(lake, FEATURE_TABLE, day, 21, default.volume)
    assert not judged.success and judged.severity == "warning", "a feature table's collapse is not critical"
    assert "collapse: 21 rows against a median of 230" in judged.note

    # What docs/data.md shows in a mapping's contracts: (ingest writes it under the suite's name).
    lake.write_json(OVERRIDES_KEY, {FEATURE_SUITE: {"volume": {"collapse_drop": 0.95, "min_relative_change": 0.95}}})
    tuned = load_contract(settings.expectations_dir, FEATURE_SUITE, load_contract_overrides(lake), FEATURE_TABLE)
    judged = check_volume(lake, FEATURE_TABLE, day, 21, tuned.volume)
    assert judged.success and judged.expected["collapse_drop"] == 0.95
    assert tuned.volume.window_days == default.volume.window_days, "keys not named keep the suite's value"


def test_overrides_apply_under_the_suites_name_and_the_lake_tables_name(settings: Settings) -> None:
    """issue 10 item 10: `order_risk` and `features/order_risk` both name the order feature table."""
    overrides = {
        "order_risk": {"drift": {"columns": [{"column": "ip_accounts_30d", "threshold": 0.6}]}},
        "features/order_risk": {"volume": {"min_history": 10}},
    }

    contract = load_contract(settings.expectations_dir, "order_risk", overrides, "features/order_risk")

    assert contract.volume.min_history == 10
    thresholds = {c.column: c.threshold for c in contract.drift.columns}
    assert thresholds["ip_accounts_30d"] == 0.6 and thresholds["account_age_hours"] == 0.25


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"volume": {"mad": 3}}, "order_risk.volume.mad: unknown key"),
        ({"drift": {"columns": [{"column": "price", "threshold": 1}]}}, "names no drift column of the suite"),
        ({"drift": {"columns": [{"column": "ip_accounts_30d", "treshold": 1}]}}, "ip_accounts_30d.treshold"),
        ({"volume": {"collapse_drop": "high"}}, "order_risk.volume.collapse_drop: expected a number"),
        ({"quality": {}}, "order_risk.quality: not a contract section"),
    ],
)
def test_malformed_overrides_name_table_and_key(override: dict, message: str) -> None:
    """issue 10 item 10."""
    meta = {"volume": {"window_days": 14}, "drift": {"columns": [{"column": "ip_accounts_30d", "kind": "numeric"}]}}
    with pytest.raises(ContractOverrideError, match=message):
        apply_overrides(meta, {"order_risk": override}, "order_risk")


def test_no_overrides_file_means_the_suites_as_they_are(lake: Lake) -> None:
    assert load_contract_overrides(lake) == {}
    lake.write_json(OVERRIDES_KEY, {"events": ["volume"]})
    with pytest.raises(ContractOverrideError, match="table 'events'"):
        load_contract_overrides(lake)


# -- any subset of the daily tables (issue 10 item 5) ----------------------------------------------------------
def _orders(day: dt.date, n: int = 40) -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC")
    return pd.DataFrame(
        {
            "order_id": [f"{day}-{i}" for i in range(n)],
            "user_id": np.arange(n, dtype="int64") % 25 + 1,
            "signup_time": (start - pd.Timedelta(days=30)).as_unit("us"),
            "purchase_time": (start + pd.to_timedelta(np.arange(n) * 30, unit="min")).as_unit("us"),
            "purchase_value": np.linspace(5, 300, n),
            "device_id": [f"d{i % 7}" for i in range(n)],
            "source": ["SEO", "Ads", "Direct", "Ads"] * (n // 4),
            "browser": ["Chrome", "Safari"] * (n // 2),
            "sex": ["M", "F"] * (n // 2),
            "age": np.full(n, 30, dtype="int32"),
            "ip_address": pd.Series([None] * n, dtype=object),  # a source without IPs
            "merchant_id": pd.Series([None] * n, dtype="Int64"),
        }
    )


def test_an_orders_only_day_with_derived_users_validates(lake: Lake, expectations_dir: Path) -> None:
    """issue 10 item 5: REQUIRED_TABLES = ("events",) made an orders-only day fail."""
    days = [dt.date(2015, 3, 1) + dt.timedelta(days=i) for i in range(2)]
    for day in days:
        lake.write("orders", day, _orders(day), schema=schemas.ORDERS)
    derive_users_and_follows(lake, days, source_table="orders")

    results = validate_day(lake, days[-1], expectations_dir)

    assert list(results) == ["users", "follows", "orders"], "dependency order, only the tables the day has"
    assert results["orders"]["rows"] == 40
    orders_report = lake.read_json(f"validation/orders/ds={days[-1].isoformat()}/report.json")
    assert orders_report["success"]


def test_a_day_without_any_daily_table_names_the_day_and_what_to_do(lake: Lake, expectations_dir: Path) -> None:
    """issue 10 item 5: the only day validation refuses is one with none of the daily tables."""
    with pytest.raises(NoTablesForDay, match=r"ds=2015-03-09: .* no partition of any daily table .*mlctl ingest"):
        validate_day(lake, dt.date(2015, 3, 9), expectations_dir)
    assert issubclass(NoTablesForDay, PartitionNotFound)
