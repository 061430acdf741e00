"""Validation of lake partitions with the GX suites in expectations/, and quarantine of bad partitions."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data.schemas import EVENT_TYPES, EVENTS
from pipelines.lake import Lake, PartitionNotFound
from pipelines.settings import Settings
from pipelines.validation.quarantine import ValidationFailed, report_key, validate_partition
from pipelines.validation.runner import validate_frame
from pipelines.validation.suites import SuiteError, load_suite_spec

DAY = dt.date(2024, 3, 10)
FEATURES = [
    "views_1d", "views_7d", "views_30d", "carts_1d", "carts_7d", "carts_30d", "purchases_7d", "purchases_30d",
    "wishlist_7d", "remove_from_cart_7d", "sessions_7d", "days_since_last_event", "days_since_last_purchase",
    "days_since_last_cart", "cart_abandonment_7d", "avg_price_viewed_30d", "followee_purchases_7d",
    "follower_count", "followee_count",
]  # fmt: skip


def make_events(n: int = 50, day: dt.date = DAY, seed: int = 0) -> pd.DataFrame:
    """A clean events partition for ``day``, in the canonical schema."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(day, tz="UTC")
    df = pd.DataFrame(
        {
            "event_id": [f"ev-{i:06d}" for i in range(n)],
            "event_time": start + pd.to_timedelta(np.sort(rng.integers(0, 86_400_000_000, n)), unit="us"),
            "user_id": rng.integers(1, 500, n),
            "session_id": [f"s-{i // 5}" for i in range(n)],
            "event_type": rng.choice(EVENT_TYPES, n),
            "product_id": rng.integers(1, 100, n),
            "category_id": rng.integers(1, 10, n),
            "brand": rng.choice(["acme", "globex", None], n),
            "price": rng.uniform(1, 500, n).round(2),
            "merchant_id": rng.integers(1, 5, n),
        }
    )
    return df[EVENTS.names]


def make_user_features(n: int = 20, day: dt.date = DAY) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1),
            "event_timestamp": pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1),
        }
    )
    for i, col in enumerate(FEATURES):
        df[col] = (np.arange(n) + i) % 7
    return df


@pytest.fixture
def expectations_dir(settings: Settings) -> Path:
    return settings.expectations_dir


def failure(report, expectation: str, column: str | None):
    """The failed check of ``expectation`` on ``column``, asserting that it exists."""
    matches = [c for c in report.failed if c.expectation == expectation and c.column == column]
    assert matches, f"expected {expectation} on {column} to fail; report:\n{report.summary()}"
    return matches[0]


# -- the suites as written -----------------------------------------------------------------------------------


def test_events_suite_columns_match_the_canonical_schema(expectations_dir):
    spec = load_suite_spec(expectations_dir, "events")
    (column_set,) = [e for e in spec.expectations if e["type"] == "expect_table_columns_to_match_set"]
    assert column_set["kwargs"]["column_set"] == EVENTS.names
    (in_set,) = [e for e in spec.expectations if e["type"] == "expect_column_values_to_be_in_set"]
    assert in_set["kwargs"]["value_set"] == list(EVENT_TYPES)


def test_clean_events_partition_passes(expectations_dir):
    report = validate_frame(make_events(), "events", DAY, expectations_dir)
    assert report.success, report.summary()
    assert report.n_rows == 50 and report.table == "events" and report.ds == DAY
    assert "validation passed" in report.summary()
    # The report is plain JSON: it goes to the lake and to humans as-is.
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ds"] == "2024-03-10" and data["success"] is True
    assert {c["expectation"] for c in data["checks"]} >= {
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_in_set",
        "expect_table_row_count_to_be_between",
    }


def test_one_suite_serves_every_day(expectations_dir):
    other_day = DAY + dt.timedelta(days=40)
    assert validate_frame(make_events(day=other_day), "events", other_day, expectations_dir).success
    # The same rows checked against the wrong day fail on event_time.
    report = validate_frame(make_events(day=other_day), "events", DAY, expectations_dir)
    assert not report.success
    failure(report, "expect_column_values_to_be_between", "event_time")


def _unknown_event_type(df):
    df.loc[3, "event_type"] = "refund"
    return "event_type", "expect_column_values_to_be_in_set", "'refund'"


def _negative_price(df):
    df.loc[4, "price"] = -12.5
    return "price", "expect_column_values_to_be_between", "-12.5"


def _absurd_price(df):
    df.loc[4, "price"] = 9e12
    return "price", "expect_column_values_to_be_between", "9000000000000.0"


def _null_user_id(df):
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[5, "user_id"] = None
    return "user_id", "expect_column_values_to_not_be_null", "ev-000005"  # the row's event_id


def _duplicate_event_id(df):
    df.loc[6, "event_id"] = df.loc[2, "event_id"]
    return "event_id", "expect_column_values_to_be_unique", "'ev-000002'"


def _event_from_previous_day(df):
    df.loc[7, "event_time"] = pd.Timestamp(DAY, tz="UTC") - pd.Timedelta(minutes=5)
    return "event_time", "expect_column_values_to_be_between", "2024-03-09T23:55:00+00:00"


def _event_at_next_midnight(df):
    # The day is [00:00, next 00:00): the next midnight belongs to the next partition.
    df.loc[7, "event_time"] = pd.Timestamp(DAY + dt.timedelta(days=1), tz="UTC")
    return "event_time", "expect_column_values_to_be_between", "2024-03-11T00:00:00+00:00"


@pytest.mark.parametrize(
    "corrupt",
    [
        _unknown_event_type,
        _negative_price,
        _absurd_price,
        _null_user_id,
        _duplicate_event_id,
        _event_from_previous_day,
        _event_at_next_midnight,
    ],
)
def test_bad_rows_fail_naming_table_column_expectation_and_example(expectations_dir, corrupt):
    df = make_events()
    column, expectation, example = corrupt(df)
    report = validate_frame(df, "events", DAY, expectations_dir)

    assert not report.success
    check = failure(report, expectation, column)
    assert check.severity == "critical" and check.unexpected_count >= 1
    summary = report.summary()
    assert "events ds=2024-03-10: validation FAILED" in summary
    (line,) = [ln for ln in summary.splitlines() if f"column '{column}': {expectation}" in ln]
    assert line.startswith("  [critical] events ") and example in line


def test_missing_column_fails_naming_it(expectations_dir):
    report = validate_frame(make_events().drop(columns=["price"]), "events", DAY, expectations_dir)
    assert not report.success
    check = failure(report, "expect_table_columns_to_match_set", None)
    assert check.observed == {"missing": ["price"]}
    assert "events table: expect_table_columns_to_match_set: missing columns ['price']" in report.summary()
    # Checks on the absent column fail too (they cannot run), rather than passing silently.
    price = failure(report, "expect_column_values_to_be_between", "price")
    assert 'column "price"' in price.error


def test_unexpected_extra_column_fails(expectations_dir):
    report = validate_frame(make_events().assign(coupon="x"), "events", DAY, expectations_dir)
    assert not report.success
    assert "unexpected columns ['coupon']" in report.summary()


def test_empty_partition_fails_on_row_count(expectations_dir):
    empty = make_events().iloc[0:0]
    report = validate_frame(empty, "events", DAY, expectations_dir)
    assert not report.success and report.n_rows == 0
    check = failure(report, "expect_table_row_count_to_be_between", None)
    assert check.observed == 0
    assert "events table: expect_table_row_count_to_be_between: observed 0; expected min_value=1" in report.summary()


def test_warning_failures_are_reported_without_failing(expectations_dir):
    df = make_events()
    df["merchant_id"] = df["merchant_id"].astype("Int64")
    df.loc[1, "merchant_id"] = None
    report = validate_frame(df, "events", DAY, expectations_dir)
    assert report.success
    check = failure(report, "expect_column_values_to_not_be_null", "merchant_id")
    assert check.severity == "warning" and report.warnings == [check]
    assert "passed with warnings" in report.summary()
    assert "[warning] events column 'merchant_id'" in report.summary()


# -- user features -------------------------------------------------------------------------------------------


def test_user_features_suite(expectations_dir):
    good = make_user_features()
    assert validate_frame(good, "user_features", DAY, expectations_dir).success
    # New feature columns do not invalidate the suite.
    assert validate_frame(good.assign(new_feature=1.0), "user_features", DAY, expectations_dir).success

    bad = good.copy()
    bad.loc[3, "views_7d"] = -1
    bad.loc[4, "user_id"] = bad.loc[0, "user_id"]
    bad["avg_price_viewed_30d"] = bad["avg_price_viewed_30d"].astype(float)
    bad.loc[5, "avg_price_viewed_30d"] = np.nan
    report = validate_frame(bad.drop(columns=["followee_count"]), "user_features", DAY, expectations_dir)
    assert not report.success
    assert failure(report, "expect_column_values_to_be_between", "views_7d").examples == [-1]
    assert failure(report, "expect_column_values_to_be_unique", "user_id").examples == [1]
    assert failure(report, "expect_column_values_to_not_be_null", "avg_price_viewed_30d").example_ids == [6]
    assert failure(report, "expect_table_columns_to_match_set", None).observed == {"missing": ["followee_count"]}


# -- partitions in the lake ----------------------------------------------------------------------------------


def test_good_partition_stays_and_gets_a_report(lake: Lake, expectations_dir):
    lake.write("events", DAY, make_events(), schema=EVENTS)
    report = validate_partition(lake, "events", DAY, expectations_dir)
    assert report.success
    assert lake.partitions("events") == [DAY] and not lake.is_quarantined("events", DAY)
    saved = lake.read_json(report_key("events", DAY))
    assert saved["success"] is True and saved["n_rows"] == 50 and saved["quarantined_to"] is None


def test_bad_partition_is_quarantined_and_raises(lake: Lake, expectations_dir):
    df = make_events()
    df.loc[3, "event_type"] = "refund"
    lake.write("events", DAY, df, schema=EVENTS)
    lake.write("events", DAY + dt.timedelta(days=1), make_events(day=DAY + dt.timedelta(days=1)), schema=EVENTS)

    with pytest.raises(ValidationFailed) as err:
        validate_partition(lake, "events", DAY, expectations_dir)

    message = str(err.value)
    assert "events ds=2024-03-10: validation FAILED" in message
    assert "column 'event_type': expect_column_values_to_be_in_set" in message and "'refund'" in message
    quarantine = lake.uri("quarantine", "events", "ds=2024-03-10")
    assert f"partition moved to quarantine: {quarantine}" in message
    # The day is gone from the table (nothing downstream can read it), the next day is untouched.
    assert lake.partitions("events") == [DAY + dt.timedelta(days=1)]
    assert lake.is_quarantined("events", DAY)
    for key in (report_key("events", DAY), "quarantine/events/ds=2024-03-10/report.json"):
        saved = lake.read_json(key)
        assert saved["success"] is False and saved["quarantined_to"] == quarantine
    assert err.value.report.critical_failures[0].examples == ["refund"]


def test_feature_partition_validated_with_a_named_suite(lake: Lake, expectations_dir):
    table = "features/user_behavior"  # the lake table differs from the suite's name
    bad = make_user_features()
    bad.loc[2, "sessions_7d"] = -3
    lake.write(table, DAY, bad)
    with pytest.raises(ValidationFailed, match=r"features/user_behavior column 'sessions_7d'.*-3"):
        validate_partition(lake, table, DAY, expectations_dir, suite="user_features")
    assert lake.is_quarantined(table, DAY) and lake.partitions(table) == []
    assert lake.read_json(report_key(table, DAY))["suite"].endswith("user_features.json")


def test_missing_partition_is_a_clear_error(lake: Lake, expectations_dir):
    with pytest.raises(PartitionNotFound, match=r"cannot validate events ds=2024-03-10: no partition .*ingest"):
        validate_partition(lake, "events", DAY, expectations_dir)


def test_revalidating_a_quarantined_day_says_where_it_is(lake: Lake, expectations_dir):
    lake.write("events", DAY, make_events().iloc[0:0], schema=EVENTS)
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        validate_partition(lake, "events", DAY, expectations_dir)
    with pytest.raises(PartitionNotFound, match="it is in quarantine"):
        validate_partition(lake, "events", DAY, expectations_dir)


# -- suite files ---------------------------------------------------------------------------------------------


@pytest.fixture
def suite_copy(tmp_path: Path, expectations_dir: Path) -> Path:
    target = tmp_path / "expectations"
    target.mkdir()
    shutil.copy(expectations_dir / "events.json", target / "events.json")
    return target


def _edit(path: Path, edit) -> None:
    suite = json.loads(path.read_text())
    edit(suite)
    path.write_text(json.dumps(suite))


def test_bad_suite_files_name_the_file(suite_copy: Path):
    path = suite_copy / "events.json"
    with pytest.raises(SuiteError, match=r"expectations/orders\.json: no expectation suite for table 'orders'"):
        validate_frame(make_events(), "orders", DAY, suite_copy)

    _edit(path, lambda s: s["expectations"].append({"type": "expect_column_values_to_be_purple", "kwargs": {}}))
    with pytest.raises(SuiteError, match=r"events\.json: expectation #\d+ \(expect_column_values_to_be_purple\)"):
        validate_frame(make_events(), "events", DAY, suite_copy)

    path.write_text('{"name": "events", "expectations": [')
    with pytest.raises(SuiteError, match=r"events\.json: not valid JSON"):
        validate_frame(make_events(), "events", DAY, suite_copy)


def test_suite_edits_are_picked_up_and_severity_is_checked(suite_copy: Path):
    path = suite_copy / "events.json"
    df = make_events()
    df.loc[3, "event_type"] = "refund"
    assert not validate_frame(df, "events", DAY, suite_copy).success

    def downgrade(suite):
        for e in suite["expectations"]:
            if e["type"] == "expect_column_values_to_be_in_set":
                e["meta"]["severity"] = "warning"

    _edit(path, downgrade)
    assert validate_frame(df, "events", DAY, suite_copy).success

    _edit(path, lambda s: s["expectations"][0]["meta"].update(severity="fatal"))
    with pytest.raises(SuiteError, match="severity 'fatal' is not one of critical, warning, info"):
        validate_frame(df, "events", DAY, suite_copy)

    day_bound = {"column": "event_time", "min_value": {"$PARAMETER": "day"}}
    _edit(
        path,
        lambda s: s["expectations"].__setitem__(0, {"type": "expect_column_values_to_be_between", "kwargs": day_bound}),
    )
    with pytest.raises(SuiteError, match=r"unknown suite parameter\(s\) \['day'\]"):
        validate_frame(df, "events", DAY, suite_copy)
