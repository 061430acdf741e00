"""Data contracts beyond single-partition expectations: types, references, volume, drift, the day's order."""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data.schemas import EVENT_TYPES, EVENTS, FOLLOWS, MERCHANTS, PRODUCTS, USERS
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings
from pipelines.validation import runner
from pipelines.validation.contracts import load_contract
from pipelines.validation.daily import DAILY_TABLES, validate_day
from pipelines.validation.drift import ks_statistic, psi_categorical, psi_numeric
from pipelines.validation.quarantine import ValidationFailed, report_key, validate_partition
from pipelines.validation.suites import SuiteError, load_suite_spec
from pipelines.validation.summary import validation_summary

START = dt.date(2024, 3, 1)
N_USERS, N_PRODUCTS, N_MERCHANTS = 200, 60, 5


def day_tables(day: dt.date, n_events: int = 300, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A clean, consistent day: dimension snapshots and events that only reference them."""
    rng = np.random.default_rng([seed, day.toordinal()])
    merchants = pd.DataFrame({"merchant_id": np.arange(1, N_MERCHANTS + 1), "name": [f"m{i}" for i in range(5)]})
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1),
            "signup_time": pd.Timestamp("2023-01-01", tz="UTC") + pd.to_timedelta(np.arange(N_USERS), unit="D"),
            "country": rng.choice(["DE", "FR", "US"], N_USERS),
            "age": rng.integers(18, 70, N_USERS).astype("int32"),
            "sex": rng.choice(["M", "F"], N_USERS),
        }
    )
    price_rng = np.random.default_rng(7)  # the catalogue does not change from day to day
    products = pd.DataFrame(
        {
            "product_id": np.arange(1, N_PRODUCTS + 1),
            "category_id": np.arange(N_PRODUCTS) % 6 + 1,
            "brand": [f"b{i % 9}" for i in range(N_PRODUCTS)],
            "price": price_rng.lognormal(3.5, 0.8, N_PRODUCTS).round(2),
            "merchant_id": np.arange(N_PRODUCTS) % N_MERCHANTS + 1,
        }
    )
    follows = pd.DataFrame(
        {
            "follower_id": np.arange(1, N_USERS + 1),
            "followee_id": np.arange(N_USERS) % N_USERS + 2 - (np.arange(N_USERS) == N_USERS - 1) * N_USERS,
            "created_at": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    pick = rng.integers(0, N_PRODUCTS, n_events)
    start = pd.Timestamp(day, tz="UTC")
    events = pd.DataFrame(
        {
            "event_id": [f"{day:%Y%m%d}-{i:06d}" for i in range(n_events)],
            "event_time": start + pd.to_timedelta(np.sort(rng.integers(0, 86_400_000_000, n_events)), unit="us"),
            "user_id": rng.integers(1, N_USERS + 1, n_events),
            "session_id": [f"s-{i // 4}" for i in range(n_events)],
            "event_type": rng.choice(EVENT_TYPES, n_events, p=[0.7, 0.12, 0.05, 0.05, 0.08]),
            "product_id": products["product_id"].to_numpy()[pick],
            "category_id": products["category_id"].to_numpy()[pick],
            "brand": products["brand"].to_numpy()[pick],
            "price": products["price"].to_numpy()[pick],
            "merchant_id": products["merchant_id"].to_numpy()[pick],
        }
    )
    return {"merchants": merchants, "users": users, "products": products, "follows": follows, "events": events}


SCHEMAS = {"merchants": MERCHANTS, "users": USERS, "products": PRODUCTS, "follows": FOLLOWS, "events": EVENTS}


def publish(lake: Lake, day: dt.date, tables: dict[str, pd.DataFrame]) -> None:
    for table, frame in tables.items():
        lake.write(table, day, frame, schema=SCHEMAS.get(table))


@pytest.fixture
def expectations_dir(settings: Settings) -> Path:
    return settings.expectations_dir


@pytest.fixture(scope="module")
def validated_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with five clean, validated days, built once per module (validation costs ~0.5 s a day)."""
    settings = get_settings(home=tmp_path_factory.mktemp("history") / ".storefront", num_threads=1)
    lake = Lake(settings)
    for i in range(5):
        day = START + dt.timedelta(days=i)
        publish(lake, day, day_tables(day))
        validate_day(lake, day, settings.expectations_dir)
    return Path(settings.lake_uri)


@pytest.fixture
def history(lake: Lake, validated_history: Path) -> dt.date:
    """This test's lake holds the five validated days; returns the next day (where tests plant bad data)."""
    shutil.copytree(validated_history, lake.root, dirs_exist_ok=True)
    return START + dt.timedelta(days=5)


def check(report, expectation: str, column: str | None = None):
    (found,) = [c for c in report.checks if c.expectation == expectation and c.column == column]
    return found


# -- the suites --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [*DAILY_TABLES, "user_features"])
def test_every_table_has_a_suite_and_a_contract(expectations_dir: Path, table: str):
    spec = load_suite_spec(expectations_dir, table)
    assert spec.expectations and spec.expectations[0]["type"] == "expect_table_columns_to_match_set"
    contract = load_contract(expectations_dir, table)
    assert contract.volume is not None
    columns = set(spec.expectations[0]["kwargs"]["column_set"])
    # The contract only names columns of the suite, and every reference points at a table with a suite.
    assert set(contract.column_types) <= columns
    for ref in contract.references:
        assert ref.column in columns and ref.table in DAILY_TABLES
        assert ref.key in load_suite_spec(expectations_dir, ref.table).expectations[0]["kwargs"]["column_set"]
    assert {c.column for c in (contract.drift.columns if contract.drift else ())} <= columns


def test_first_days_pass_with_no_reference_yet(lake: Lake, expectations_dir: Path):
    publish(lake, START, day_tables(START))
    results = validate_day(lake, START, expectations_dir)
    assert list(results) == ["merchants", "users", "products", "follows", "events"]  # dimensions first
    assert all(not r["warnings"] for r in results.values()), results
    report = lake.read_json(report_key("events", START))
    notes = {c["expectation"]: c["note"] for c in report["checks"] if c["note"]}
    assert notes["expect_table_row_count_to_match_history"].startswith("no reference yet")
    assert notes["expect_column_distribution_to_match_reference_psi"].startswith("no reference yet")
    refs = [c for c in report["checks"] if c["expectation"] == "expect_column_values_to_exist_in_table"]
    assert {c["observed"]["reference"] for c in refs} == {
        f"{t} ds=2024-03-01" for t in ("users", "products", "merchants")
    }


def test_clean_history_passes_every_check(lake: Lake, expectations_dir: Path, history: dt.date):
    publish(lake, history, day_tables(history))
    results = validate_day(lake, history, expectations_dir)
    assert all(not r["warnings"] for r in results.values()), results
    report = lake.read_json(report_key("events", history))
    volume = [c for c in report["checks"] if c["expectation"] == "expect_table_row_count_to_match_history"][0]
    assert volume["success"] and volume["expected"]["history_days"] == 5 and volume["note"] is None


# -- referential -------------------------------------------------------------------------------------------


def test_orphan_user_ids_are_critical_and_quarantine_events(lake: Lake, expectations_dir: Path, history: dt.date):
    tables = day_tables(history)
    tables["events"].loc[:9, "user_id"] = 999_999
    publish(lake, history, tables)
    with pytest.raises(ValidationFailed) as err:
        validate_day(lake, history, expectations_dir)
    found = check(err.value.report, "expect_column_values_to_exist_in_table", "user_id")
    assert not found.success and found.severity == "critical"
    assert found.unexpected_count == 10 and found.examples == [999_999]
    assert "events column 'user_id': expect_column_values_to_exist_in_table: 10 unexpected" in str(err.value)
    assert "table='users'" in str(err.value)
    assert lake.is_quarantined("events", history) and not lake.exists("events", history)
    assert lake.exists("users", history)  # the dimensions passed and stay


def test_orphan_merchant_is_a_warning(lake: Lake, expectations_dir: Path, history: dt.date):
    tables = day_tables(history)
    tables["events"].loc[:2, "merchant_id"] = 77
    publish(lake, history, tables)
    results = validate_day(lake, history, expectations_dir)
    (warning,) = results["events"]["warnings"]
    assert "merchant_id" in warning and "expect_column_values_to_exist_in_table" in warning and "77" in warning
    assert lake.exists("events", history)


def test_follows_reference_users(lake: Lake, expectations_dir: Path, history: dt.date):
    tables = day_tables(history)
    tables["follows"].loc[0, "followee_id"] = 5_000
    publish(lake, history, tables)
    with pytest.raises(ValidationFailed, match=r"follows column 'followee_id'.*5000") as err:
        validate_day(lake, history, expectations_dir)
    assert "not validated because of this failure: events" in str(err.value)
    assert lake.is_quarantined("follows", history) and lake.exists("events", history)


def test_missing_dimension_uses_the_latest_earlier_one(lake: Lake, expectations_dir: Path, history: dt.date):
    lake.write("events", history, day_tables(history)["events"], schema=EVENTS)  # ingested alone
    report = validate_partition(lake, "events", history, expectations_dir)
    assert report.success
    ref = check(report, "expect_column_values_to_exist_in_table", "user_id")
    assert ref.observed["reference"] == f"users ds={history - dt.timedelta(days=1)}"


# -- volume ------------------------------------------------------------------------------------------------


def test_volume_collapse_is_critical(lake: Lake, expectations_dir: Path, history: dt.date):
    publish(lake, history, day_tables(history, n_events=20))
    with pytest.raises(ValidationFailed, match="collapse: 20 rows against a median of 300"):
        validate_day(lake, history, expectations_dir)
    assert lake.is_quarantined("events", history)


def test_volume_anomaly_is_a_warning(lake: Lake, expectations_dir: Path, history: dt.date):
    publish(lake, history, day_tables(history, n_events=120))
    results = validate_day(lake, history, expectations_dir)
    (warning,) = [w for w in results["events"]["warnings"] if "row_count" in w]
    assert "120 rows is outside" in warning and "-60%" in warning


def test_quarantined_days_are_not_history(lake: Lake, expectations_dir: Path, history: dt.date):
    publish(lake, history, day_tables(history, n_events=20))
    with pytest.raises(ValidationFailed):
        validate_day(lake, history, expectations_dir)
    nxt = history + dt.timedelta(days=1)
    publish(lake, nxt, day_tables(nxt))
    report = validate_partition(lake, "events", nxt, expectations_dir)
    volume = check(report, "expect_table_row_count_to_match_history")
    assert volume.success and volume.expected["history_days"] == 5 and volume.expected["median"] == 300


# -- drift -------------------------------------------------------------------------------------------------


def test_drifted_price_is_a_warning_and_the_day_continues(lake: Lake, expectations_dir: Path, history: dt.date):
    tables = day_tables(history)
    tables["events"]["price"] = (tables["events"]["price"] * 4).round(2)
    publish(lake, history, tables)
    results = validate_day(lake, history, expectations_dir)  # what the DAG's validate step runs: no exception
    (warning,) = results["events"]["warnings"]
    assert "column 'price': expect_column_distribution_to_match_reference_psi: PSI" in warning
    report = lake.read_json(report_key("events", history))
    assert report["success"] is True and lake.exists("events", history)
    drift = [c for c in report["checks"] if c["column"] == "price" and "distribution" in c["expectation"]][0]
    assert drift["severity"] == "warning" and drift["observed"]["psi"] > 1.0


def test_drift_statistics():
    rng = np.random.default_rng(0)
    ref, same, shifted = rng.normal(0, 1, 5000), rng.normal(0, 1, 5000), rng.normal(1, 1, 5000)
    assert psi_numeric(same, ref) < 0.02 < 0.25 < psi_numeric(shifted, ref)
    assert ks_statistic(same, ref) < 0.05 and 0.3 < ks_statistic(shifted, ref) < 0.45
    a = pd.Series(rng.choice(["view", "cart"], 2000, p=[0.8, 0.2]))
    b = pd.Series(rng.choice(["view", "cart", "refund"], 2000, p=[0.5, 0.2, 0.3]))
    assert psi_categorical(a, a.sample(frac=1, random_state=1)) < 1e-9 and psi_categorical(b, a) > 0.25


# -- timestamps, duplicates, types -------------------------------------------------------------------------


def test_signup_after_the_day_is_critical(lake: Lake, expectations_dir: Path, history: dt.date):
    tables = day_tables(history)
    tables["users"].loc[3, "signup_time"] = pd.Timestamp(history + dt.timedelta(days=2), tz="UTC")
    publish(lake, history, tables)
    with pytest.raises(ValidationFailed, match=r"users column 'signup_time': expect_column_values_to_be_between"):
        validate_day(lake, history, expectations_dir)
    assert lake.is_quarantined("users", history) and lake.exists("events", history)


def test_event_in_the_future_is_critical_on_todays_partition(
    lake: Lake, expectations_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    today = dt.datetime.now(dt.UTC).date()
    # The validation's clock at noon today, so a future time inside today exists at any hour the test runs.
    noon = dt.datetime.combine(today, dt.time(12), dt.UTC)
    monkeypatch.setattr(runner, "day_parameters", functools.partial(runner.day_parameters, now=noon))
    events = day_tables(today, n_events=40)["events"]
    events["event_time"] = pd.Timestamp(today, tz="UTC") + pd.Timedelta(seconds=1)
    events.loc[5, "event_time"] = pd.Timestamp(noon) + pd.Timedelta(minutes=30)
    lake.write("events", today, events, schema=EVENTS)
    with pytest.raises(ValidationFailed) as err:
        validate_partition(lake, "events", today, expectations_dir)
    bounds = [c for c in err.value.report.critical_failures if c.column == "event_time"]
    # Only the "not after now" bound fails: the time is inside today.
    (bound,) = bounds
    assert set(bound.expected) == {"max_value"} and bound.example_ids == [events.loc[5, "event_id"]]
    assert pd.Timestamp(bound.expected["max_value"]) == pd.Timestamp(noon)  # now, at validation time


@pytest.mark.parametrize(
    ("table", "column", "expectation"),
    [
        ("users", "user_id", "expect_column_values_to_be_unique"),
        ("products", "product_id", "expect_column_values_to_be_unique"),
        ("merchants", "merchant_id", "expect_column_values_to_be_unique"),
        ("follows", None, "expect_compound_columns_to_be_unique"),
    ],
)
def test_duplicate_ids_are_critical(lake, expectations_dir, history, table, column, expectation):
    tables = day_tables(history)
    frame = tables[table]
    tables[table] = pd.concat([frame, frame.iloc[[1]]], ignore_index=True)
    publish(lake, history, tables)
    with pytest.raises(ValidationFailed) as err:
        validate_day(lake, history, expectations_dir)
    failed = err.value.report.critical_failures
    assert err.value.report.table == table and any(c.expectation == expectation for c in failed), str(err.value)


def test_wrong_column_type_is_critical(lake: Lake, expectations_dir: Path):
    events = day_tables(START)["events"]
    events["price"] = events["price"].astype(str)
    events["event_time"] = events["event_time"].dt.tz_localize(None)
    lake.write("events", START, events)
    with pytest.raises(ValidationFailed) as err:
        validate_partition(lake, "events", START, expectations_dir)
    types = check(err.value.report, "expect_column_types_to_match_contract")
    assert types.observed == {"mismatched": {"event_time": "datetime64[ns]", "price": "object"}}
    assert "column types {'event_time': 'datetime64[ns]', 'price': 'object'}" in str(err.value)


# -- orders ------------------------------------------------------------------------------------------------


def test_orders_and_labels_suites(lake: Lake, expectations_dir: Path, history: dt.date):
    publish(lake, history, day_tables(history))
    n = 30
    orders = pd.DataFrame(
        {
            "order_id": [f"o-{i}" for i in range(n)],
            "user_id": np.arange(1, n + 1),
            "signup_time": pd.Timestamp("2023-06-01", tz="UTC"),
            "purchase_time": pd.Timestamp(history, tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
            "purchase_value": np.linspace(5, 300, n),
            "device_id": [f"d{i % 7}" for i in range(n)],
            "source": ["SEO", "Ads", "Direct"] * 10,
            "browser": ["Chrome", "Safari"] * 15,
            "sex": ["M", "F"] * 15,
            "age": np.full(n, 30),
            "ip_address": [f"10.0.0.{i}" for i in range(n)],
            "merchant_id": np.arange(n) % N_MERCHANTS + 1,
        }
    )
    orders.loc[4, "signup_time"] = orders.loc[4, "purchase_time"] + pd.Timedelta(hours=1)  # bought before signup
    orders.loc[6, "user_id"] = 12_345
    lake.write("orders", history, orders)
    labels = pd.DataFrame(
        {"order_id": ["o-1", "o-2"], "is_fraud": [1, 0], "label_time": pd.Timestamp(history, tz="UTC")}
    )
    lake.write("order_labels", history, labels)
    with pytest.raises(ValidationFailed) as err:
        validate_day(lake, history, expectations_dir)
    report = err.value.report
    assert report.table == "orders"
    assert check(report, "expect_column_pair_values_a_to_be_greater_than_b").unexpected_count == 1
    assert check(report, "expect_column_values_to_exist_in_table", "user_id").examples == [12_345]
    assert "not validated because of this failure: order_labels" in str(err.value)


# -- contract files ----------------------------------------------------------------------------------------


def test_bad_contract_names_file_and_key(tmp_path: Path, expectations_dir: Path):
    target = tmp_path / "expectations"
    target.mkdir()
    shutil.copy(expectations_dir / "events.json", target / "events.json")
    suite = json.loads((target / "events.json").read_text())
    suite["meta"]["volume"]["severity"] = "loud"
    (target / "events.json").write_text(json.dumps(suite))
    with pytest.raises(SuiteError, match=r"events\.json: meta\.volume: severity 'loud'"):
        load_contract(target, "events")
    suite["meta"]["volume"] = {"window": 3}
    (target / "events.json").write_text(json.dumps(suite))
    with pytest.raises(SuiteError, match=r"events\.json: meta: .*'window'"):
        load_contract(target, "events")


# -- status ------------------------------------------------------------------------------------------------


def test_status_summarises_warnings_critical_and_quarantine(lake: Lake, expectations_dir: Path, history: dt.date):
    warned = day_tables(history)
    warned["events"]["price"] = warned["events"]["price"] * 4
    publish(lake, history, warned)
    validate_day(lake, history, expectations_dir)
    bad_day = history + dt.timedelta(days=1)
    publish(lake, bad_day, day_tables(bad_day, n_events=10))
    with pytest.raises(ValidationFailed):
        validate_day(lake, bad_day, expectations_dir)

    summary = validation_summary(lake, days=7)
    assert summary["days"][-1] == bad_day.isoformat() and len(summary["days"]) == 7
    events = summary["tables"]["events"]
    assert (events["passed"], events["warnings"], events["critical"]) == (5, 1, 1)
    assert events["warnings_days"] == [history.isoformat()] and events["critical_days"] == [bad_day.isoformat()]
    assert events["quarantined"] == [bad_day.isoformat()]
    assert summary["tables"]["users"] == {
        "passed": 7, "warnings": 0, "critical": 0, "warnings_days": [], "critical_days": [], "quarantined": [],
    }  # fmt: skip


def test_collect_status_has_the_validation_summary(
    settings: Settings, history: dt.date, monkeypatch: pytest.MonkeyPatch
):
    from pipelines import status

    # No models and no Airflow here: only the validation part of the status is under test.
    monkeypatch.setattr(status, "load_specs", lambda _: {})
    monkeypatch.setattr(status, "AirflowClient", lambda _: (_ for _ in ()).throw(OSError("no airflow")))
    report = status.collect_status(settings)
    assert report["validation_error"] is None and report["airflow_error"] == "no airflow"
    assert report["validation"]["tables"]["events"]["passed"] == 5
