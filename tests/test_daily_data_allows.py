"""The daily run processes complete days and runs what the data allows (issue 10, items 1, 2, 5 and 11).

A source lands some subset of the raw tables (a behaviour log: events and the users/follows derived from them; an
orders file: orders, labels and the users derived from them). The days here are simulated (so the tables pass
their contracts) and landed as ``mlctl ingest`` would land a source that carries only those tables.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.data import schemas
from pipelines.data.extract import day_tables
from pipelines.data.landed import record_landing
from pipelines.data.simulator import SimulationConfig
from pipelines.flows import daily_features
from pipelines.flows.daily_plan import (
    DayNotEnded,
    NothingToProcess,
    schedule_window,
    skipped_families,
)
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings

DAYS = [dt.date(2025, 3, 1), dt.date(2025, 3, 2)]
BEHAVIOUR = ("events", "users", "follows")
ORDERS = ("orders", "order_labels", "users")


def land(settings: Settings, tables: tuple[str, ...], days: list[dt.date] = DAYS) -> Lake:
    """Land the simulated ``tables`` of ``days`` and record the span, as an ingest of such a source would."""
    lake = Lake(settings)
    config = SimulationConfig(seed=3, n_users=300, start=days[0] - dt.timedelta(days=30))
    for day in days:
        frames = day_tables(config, day)
        for table in tables:
            lake.write(table, day, frames[table], schema=schemas.TABLES[table])
    record_landing(lake, list(tables), "UTC", None)
    return lake


def ingested(tmp_path: Path, **overrides: object) -> Settings:
    """An ingested-source world with the shipped specs (purchase_intent, order_fraud, product_ranking)."""
    return get_settings(home=tmp_path / ".storefront", data_source="ingested", num_threads=1, **overrides)


def run_day(settings: Settings, day: dt.date) -> dict:
    daily_features.extract(settings, day)
    daily_features.validate(settings, day)
    return daily_features.features(settings, day)


def test_a_behaviour_only_log_runs_user_and_ranking_features_and_skips_order_risk(tmp_path: Path) -> None:
    """issue 10 item 2: the shipped order_fraud spec no longer makes a behaviour log's day fail on lake/orders."""
    settings = ingested(tmp_path)
    lake = land(settings, BEHAVIOUR)

    results = run_day(settings, DAYS[1])

    assert results["user_behavior"]["rows"] > 0 and results["ranking"]["features/product_stats"]["rows"] > 0
    assert lake.exists("features/user_behavior", DAYS[1]) and lake.exists("features/product_stats", DAYS[1])
    assert not lake.exists("features/order_risk", DAYS[1])
    skipped = skipped_families(lake, DAYS[1])
    assert list(skipped) == ["order_risk"]
    assert "no orders partition for 2025-03-02" in skipped["order_risk"]
    assert results["order_risk"] == {"skipped": skipped["order_risk"]}
    # The day counts as done: something was built, and it reaches the online store.
    assert daily_features.materialize(settings, DAYS[1])["rows"] > 0


def test_an_orders_only_source_reaches_order_features(tmp_path: Path) -> None:
    """issue 10 item 5: extract accepts a day without events or follows; only order features are built."""
    settings = ingested(tmp_path)
    lake = land(settings, ORDERS)

    landed = daily_features.extract(settings, DAYS[1])
    assert set(landed) == set(ORDERS)
    daily_features.validate(settings, DAYS[1])
    results = daily_features.features(settings, DAYS[1])

    assert results["order_risk"]["rows"] > 0 and lake.exists("features/order_risk", DAYS[1])
    skipped = skipped_families(lake, DAYS[1])
    assert sorted(skipped) == ["ranking", "user_behavior"]
    assert "no events, follows partition" in skipped["user_behavior"]
    assert "no events partition" in skipped["ranking"]


def test_a_day_without_any_table_fails_naming_the_landed_span(tmp_path: Path) -> None:
    """issue 10 items 1 and 5: a day outside what was landed fails, naming the span; it never succeeds empty."""
    settings = ingested(tmp_path)
    land(settings, BEHAVIOUR)

    with pytest.raises(daily_features.MissingIngestedDay) as failure:
        daily_features.extract(settings, dt.date(2025, 2, 27))
    message = str(failure.value)
    assert "2025-02-27: none of the tables" in message
    assert "mlctl ingest landed 2025-03-01 .. 2025-03-02; 2025-02-27 is outside that span" in message


def test_a_day_no_family_can_use_is_never_done(tmp_path: Path) -> None:
    """issue 10 item 2: when every family is skipped the run fails (features and materialize) instead of
    succeeding with nothing built."""
    settings = ingested(tmp_path)
    lake = land(settings, ("users",))

    with pytest.raises(NothingToProcess, match="no feature family could run, so the day is not done"):
        daily_features.features(settings, DAYS[1])
    assert sorted(skipped_families(lake, DAYS[1])) == ["order_risk", "ranking", "user_behavior"]
    with pytest.raises(NothingToProcess, match="2025-03-02"):
        daily_features.materialize(settings, DAYS[1])


def test_a_day_holding_only_late_labels_is_done(tmp_path: Path) -> None:
    """issue 10 item 5: chargebacks keep arriving after an orders file's last order (its landed span ends with
    days of labels only); such a day validates its labels and is done, so a scheduled run over the span does not
    fail on it."""
    settings = ingested(tmp_path)
    lake = land(settings, ("order_labels",))

    assert daily_features.validate(settings, DAYS[1])["order_labels"]["rows"] > 0
    results = daily_features.features(settings, DAYS[1])

    assert sorted(skipped_families(lake, DAYS[1])) == ["order_risk", "ranking", "user_behavior"]
    assert all("skipped" in result for result in results.values())
    assert daily_features.materialize(settings, DAYS[1]) == {"rows": 0}


def test_a_day_in_progress_is_refused(tmp_path: Path) -> None:
    """issue 10 item 11: processing the day that has just begun is refused, naming the day and the UTC time."""
    settings = get_settings(home=tmp_path / ".storefront", num_threads=1, sim_users=300)
    today = dt.date(2026, 12, 6)
    at = dt.datetime(2026, 12, 6, 4, 24, tzinfo=dt.UTC)

    with pytest.raises(DayNotEnded) as refusal:
        daily_features.extract(settings, today, now=at)
    assert "2026-12-06 has not ended: it is 2026-12-06 04:24 UTC" in str(refusal.value)
    assert "run 2026-12-05 now" in str(refusal.value)
    assert not Lake(settings).exists("events", today)
    # The day before has ended: it is extracted.
    assert daily_features.extract(settings, today - dt.timedelta(days=1), now=at)["events"]["rows"] > 0


def test_the_schedule_follows_the_landed_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10 item 1: with data_source=ingested the daily DAG schedules the landed days (default start date
    2025-01-01 would lie after a 2017 log); explicit dates win."""
    settings = ingested(tmp_path)
    assert schedule_window(settings) == (settings.start_date, None)  # nothing landed yet
    land(settings, BEHAVIOUR)
    # The simulator keeps its configured dates whatever a lake holds.
    assert schedule_window(settings.model_copy(update={"data_source": "simulator"})) == (dt.date(2025, 1, 1), None)
    assert schedule_window(settings) == (DAYS[0], DAYS[1])

    # A child process (an Airflow task, the DAG file) gets no default date, so it follows the span too.
    env = settings.environment()
    assert "STOREFRONT_START_DATE" not in env and "STOREFRONT_END_DATE" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert schedule_window(get_settings()) == (DAYS[0], DAYS[1])

    monkeypatch.setenv("STOREFRONT_START_DATE", "2025-03-02")
    child = get_settings()
    assert schedule_window(child) == (dt.date(2025, 3, 2), DAYS[1])
    assert child.environment()["STOREFRONT_START_DATE"] == "2025-03-02"


def test_promotion_judges_freshness_at_the_newest_day_the_features_could_be_built(tmp_path: Path) -> None:
    """issue 10 item 5: an orders file ends 30 days before its last labels; a run dated by the labels judges the
    online features at the file's last order day, not at the run's date (which no feature can reach)."""
    from pipelines.flows.training import data_time
    from pipelines.specs import load_spec

    settings = ingested(tmp_path)
    lake = land(settings, ORDERS)
    late_labels = dt.date(2025, 4, 1)
    lake.write("order_labels", late_labels, lake.read("order_labels", DAYS[1]), schema=schemas.ORDER_LABELS)
    spec = load_spec(settings.models_dir / "order_fraud.yaml")

    assert data_time(lake, spec, late_labels) == schemas.as_of(DAYS[1])
    # A live source: the run's own day is the newest input day.
    assert data_time(lake, spec, DAYS[1]) == schemas.as_of(DAYS[1])
    # Input landed but never built still counts: the newest landed orders day decides.
    lake.write("orders", DAYS[1] + dt.timedelta(days=1), lake.read("orders", DAYS[1]), schema=schemas.ORDERS)
    lake.write("users", DAYS[1] + dt.timedelta(days=1), lake.read("users", DAYS[1]), schema=schemas.USERS)
    assert data_time(lake, spec, late_labels) == schemas.as_of(DAYS[1] + dt.timedelta(days=1))
